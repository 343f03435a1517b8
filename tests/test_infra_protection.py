"""The cluster's protection as the program declares it: the API-key Secret and its mounted file (no plaintext in
any manifest or output), a stack without keys refused at preview, KubeRay token auth, the NetworkPolicy and the
pods' security contexts; rendered manifests validated against the CRD and Kubernetes' schemas."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pulumi
import pytest
from pulumi.runtime import rpc
from pulumi.runtime.settings import get_root_resource

from infra.config import PROJECT, load_stack
from infra.network_policy import network_policy_spec
from infra.program import main
from infra.render import REDACTED, render
from tests.infra_helpers import (
    FAKE_API_KEYS, SECRET, SECRETS, STACKS, parse_document, pulumi_config, stack_document, with_values,
)
from tests.manifests import K8S_VERSION, documents, rayservice_validator

NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"


def use(document: dict, drop: tuple[str, ...] = ()) -> None:
    config = {k: v for k, v in pulumi_config(document).items() if k.split(":", 1)[1] not in drop}
    pulumi.runtime.set_all_config(config, [k for k in SECRETS if k in config])


def after(deployment, check):
    return deployment.ray_service.ray_service.urn.apply(lambda _: check())


def ray_containers(cluster: dict) -> list[dict]:
    groups = [cluster["headGroupSpec"]] + cluster.get("workerGroupSpecs", [])
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def pod_specs(cluster: dict) -> list[dict]:
    return [g["template"]["spec"] for g in [cluster["headGroupSpec"]] + cluster.get("workerGroupSpecs", [])]


def without_secrets(value):
    """Inputs as the engine would show them: every Pulumi-secret value replaced."""
    if rpc.is_rpc_secret(value):
        return "[secret]"
    if isinstance(value, dict):
        return {k: without_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value


# ---- rendered manifests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=STACKS)
def rendered(request, tmp_path_factory) -> tuple[str, list[Path]]:
    return request.param, render(request.param, tmp_path_factory.mktemp(f"render-{request.param}"))


def test_api_keys_reach_every_ray_container_from_a_secret_never_in_plaintext(rendered):
    stack, paths = rendered
    docs = documents(paths)
    text = "\n".join(p.read_text() for p in paths)
    assert "<apiKeys>" not in text  # render's placeholder for the secret config
    name = load_stack(stack).ray_service.name
    (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == f"{name}-api-keys"]
    assert secret["stringData"] == {"API_KEYS": REDACTED} and secret["type"] == "Opaque"
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    rayservice_validator().validate(service)
    cluster = service["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]:
        pod = group["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == f"{name}-api-keys"]
        for container in pod["containers"]:
            env = {item["name"]: item.get("value") for item in container["env"]}
            # A file from a mounted Secret (not subPath, not an env var): the kubelet updates it on rotation and the
            # replicas re-read it (serving_app/auth.py APIKeyFile).
            (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
            assert "subPath" not in mount and mount["readOnly"] is True
            assert env["API_KEYS_FILE"] == f"{mount['mountPath']}/API_KEYS", container["name"]
            assert "API_KEYS" not in env


def test_the_ray_cluster_uses_token_auth_and_locked_down_pods(rendered):
    _, paths = rendered
    (service,) = [d for d in documents(paths) if d["kind"] == "RayService"]
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}  # KubeRay creates the token Secret and sets every pod's env
    for spec in pod_specs(cluster):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in ray_containers(cluster):
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_the_network_policy_validates_and_guards_rays_ports(rendered):
    stack, paths = rendered
    config = load_stack(stack)
    (policy,) = [d for d in documents(paths) if d["kind"] == "NetworkPolicy"]
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    pods = spec["podSelector"]["matchLabels"]
    assert pods["app.kubernetes.io/instance"] == config.ray_service.name
    assert pods["app.kubernetes.io/component"] == "ray-node"
    # Every rule either comes from the cluster's own pods or names its ports: the head's GCS (6379), client
    # server (10001) and Jobs API (8265) are reachable only from the cluster's pods and the operator.
    open_ports = set()
    for rule in spec["ingress"]:
        if rule.get("from") == [{"podSelector": spec["podSelector"]}]:
            assert "ports" not in rule
            continue
        assert rule["ports"], rule
        if not rule.get("from") or {"namespaceSelector": {}} in rule["from"]:
            open_ports |= {port["port"] for port in rule["ports"]}
    assert open_ports == {config.serve.port, 8080}
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": config.kuberay.namespace}}}
    (rule,) = [r for r in spec["ingress"] if r.get("from") == [operator]]
    assert {port["port"] for port in rule["ports"]} == {8265, 52365, config.serve.port}


# ---- the program under mocks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_the_keys_are_only_in_the_secret_and_in_no_output(mocks, stack):
    use(stack_document(stack))
    deployment = main()
    outputs = get_root_resource().outputs

    def check(values):
        (secret,) = [r for r in mocks.of_type(SECRET) if r.name == "api-keys"]
        value = secret.inputs["stringData"]
        assert rpc.is_rpc_secret(value) or rpc.is_rpc_secret(value["API_KEYS"])
        shown = json.dumps([without_secrets(r.inputs) for r in mocks.resources])
        for key in FAKE_API_KEYS.split(","):
            assert key not in shown and key not in json.dumps(values)

    return after(deployment, lambda: pulumi.Output.all(*outputs.values()).apply(check))


@pulumi.runtime.test
def test_a_stack_without_keys_is_refused_before_anything_is_created(mocks):
    use(stack_document("cpu"), drop=("apiKeys",))
    with pytest.raises(pulumi.RunError, match="no apiKeys: set them .*serve.allowUnauthenticated: true"):
        main()
    assert mocks.resources == []


@pulumi.runtime.test
def test_a_key_no_header_can_carry_is_refused_without_repeating_it(mocks):
    document = stack_document("cpu")
    config = {**pulumi_config(document), f"{PROJECT}:apiKeys": "good-key-123,bad key 456"}
    pulumi.runtime.set_all_config(config, list(SECRETS))
    with pytest.raises(pulumi.RunError) as error:
        main()
    assert "apiKeys: key 2 has spaces" in str(error.value) and "bad key" not in str(error.value)
    assert mocks.resources == []


@pulumi.runtime.test
def test_allow_unauthenticated_serves_without_keys_and_warns(mocks, monkeypatch):
    warnings = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *args, **kwargs: warnings.append(message))
    use(with_values("cpu", lambda v: v["serve"].update(allowUnauthenticated=True)), drop=("apiKeys",))
    deployment = main()

    def check():
        assert not [r for r in mocks.of_type(SECRET) if r.name == "api-keys"]
        (service,) = [r for r in mocks.resources if r.inputs.get("kind") == "RayService"]
        for container in ray_containers(service.inputs["spec"]["rayClusterConfig"]):
            assert not {"API_KEYS", "API_KEYS_FILE"} & {item["name"] for item in container["env"]}
        assert any("anyone who reaches the serve port" in w for w in warnings), warnings

    return after(deployment, check)


@pulumi.runtime.test
def test_the_network_policy_can_be_turned_off(mocks):
    use(with_values("gpu", lambda v: v.update(networkPolicy={"enabled": False})))
    deployment = main()

    def check():
        assert mocks.of_type(NETWORK_POLICY) == []

    return after(deployment, check)


def test_serve_peers_and_an_exposed_dashboard_shape_the_policy():
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]

    def edit(values):
        values["networkPolicy"] = {"serveFrom": peers}
        values["dashboard"] = {"serviceType": "LoadBalancer", "auth": "token"}

    stack = parse_document(with_values("gpu", edit))
    spec = network_policy_spec(stack)
    (serve,) = [r for r in spec["ingress"] if r.get("from") == peers]
    assert serve["ports"] == [{"protocol": "TCP", "port": stack.serve.port}]
    assert {"ports": [{"protocol": "TCP", "port": 8265}]} in spec["ingress"]  # exposed on purpose, token-guarded
    kubernetes_validate.validate({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                  "metadata": {"name": "p"}, "spec": spec}, K8S_VERSION, strict=True)

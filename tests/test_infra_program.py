"""The Pulumi program and each component under Pulumi mocks, with both real stack files loaded as config."""

from __future__ import annotations

import base64
import json

import pulumi
import pytest
import yaml
from pulumi.runtime import rpc
from pulumi.runtime.settings import get_root_resource

from infra.config import REPO_ROOT, load_stack
from infra.mocks import IMAGE_TYPE, RecordingMocks
from infra.program import main
from infra.ray_service import _minutes
from infra.rollout import wait_for, with_config_marker
from infra.serve_config import serve_config
from tests.infra_helpers import (
    FAKE_HF_TOKEN, FAKE_REGISTRY_PASSWORD, SECRET, SECRETS, STACKS, plain, pulumi_config, stack_document, with_values,
)

SECRET_KEYS = list(SECRETS)


def use_config(document: dict, secrets: bool = True) -> None:
    pulumi.runtime.set_all_config(pulumi_config(document, secrets), SECRET_KEYS if secrets else [])


def after(deployment, check):
    """Run `check` once every resource is registered (the RayService depends on all the others)."""
    return deployment.ray_service.ray_service.urn.apply(lambda _: check())


def ray_service_of(mocks: RecordingMocks) -> dict:
    (resource,) = [r for r in mocks.resources if r.inputs.get("kind") == "RayService"]
    return resource.inputs


def containers(spec: dict) -> list[dict]:
    cluster = spec["rayClusterConfig"]
    groups = [cluster["headGroupSpec"]] + cluster.get("workerGroupSpecs", [])
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# ---- both stacks, as users run them -----------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_stack_declares_images_secrets_storage_and_ray_service_on_the_clusters_operator(mocks, stack):
    use_config(stack_document(stack))
    deployment = main()
    config = load_stack(stack)

    def check():
        # The operator is the kuberay stack's (once per cluster): read, never installed here.
        assert not [r for r in mocks.resources if r.type.startswith("kubernetes:helm.sh/")]
        assert ("pulumi:pulumi:StackReference", "organization/llm-serving/kuberay") in {
            (r.type, r.inputs["id"]) for r in mocks.reads}
        built = {r.inputs["imageName"].split("/")[-1].split(":")[0] for r in mocks.of_type(IMAGE_TYPE)}
        assert built == {"llm-serving-" + h.value.lower().replace("_", "-") for h in config.needed_hardware()}
        assert mocks.one("kubernetes:core/v1:PersistentVolume").inputs["spec"]["persistentVolumeReclaimPolicy"] == \
            "Retain"
        service = ray_service_of(mocks)
        assert service["apiVersion"] == "ray.io/v1"
        spec = service["spec"]
        # The stack's applications, and the empty one whose name says which config this is (infra/rollout.py).
        marked, marker = with_config_marker(serve_config(config))
        assert yaml.safe_load(spec["serveConfigV2"]) == marked
        # Serve listens where every Ray container exposes `serve` and where the Service sends traffic.
        port = config.serve.port
        assert [p["targetPort"] for p in spec["serveService"]["spec"]["ports"]] == [port]
        assert spec["rayClusterConfig"]["rayVersion"] == config.ray_version
        assert spec["upgradeStrategy"] == {"type": "None"}
        assert "serviceUnhealthySecondThreshold" not in spec and "deploymentUnhealthySecondThreshold" not in spec
        annotations = service["metadata"]["annotations"]
        assert annotations["pulumi.com/waitFor"] == wait_for(marker, len(config.serve.applications) + 1)
        assert annotations["ray.io/initializing-timeout"] == config.ray_service.initializing_timeout
        for container in containers(spec):
            assert "@sha256:" in container["image"], container["image"]
            env = {e["name"]: e for e in container["env"]}
            assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": f"{config.ray_service.name}-hf-token",
                                                                    "key": "HF_TOKEN"}
            assert {p["name"]: p["containerPort"] for p in container["ports"]}["serve"] == port
            assert container["resources"]["requests"] == container["resources"]["limits"]
            assert container["lifecycle"]["preStop"]["exec"]["command"][-1] == "ray stop"
            assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp/ray", "/dev/shm", "/models",
                                                                            "/etc/llm-serving/api-keys"}
        assert spec["serveService"]["spec"]["type"] == "ClusterIP"
        assert spec["rayClusterConfig"]["headGroupSpec"]["serviceType"] == "ClusterIP"

    return after(deployment, check)


@pulumi.runtime.test
def test_gpu_pods_request_gpus_and_runtime_class(mocks):
    use_config(stack_document("gpu"))
    deployment = main()

    def check():
        cluster = ray_service_of(mocks)["spec"]["rayClusterConfig"]
        head = cluster["headGroupSpec"]
        assert head["rayStartParams"]["num-gpus"] == "8" and head["rayStartParams"]["num-cpus"] == "160"
        assert head["template"]["spec"]["runtimeClassName"] == "nvidia"
        assert head["template"]["spec"]["containers"][0]["resources"]["limits"] == {
            "cpu": "160", "memory": "300G", "nvidia.com/gpu": "8"}
        workers = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
        assert set(workers) == {"gpu-nvidia", "gpu-nvidia-h100"}  # gpu-amd is disabled
        assert workers["gpu-nvidia"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "gpu-node-1"}
        shm = [v for v in head["template"]["spec"]["volumes"] if v["name"] == "dshm"][0]
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}

    return after(deployment, check)


@pulumi.runtime.test
def test_cpu_groups_carry_custom_resources_and_vendor_selectors(mocks):
    use_config(stack_document("cpu"))
    deployment = main()

    def check():
        cluster = ray_service_of(mocks)["spec"]["rayClusterConfig"]
        head = cluster["headGroupSpec"]
        vendor = "feature.node.kubernetes.io/cpu-model.vendor_id"
        assert head["template"]["spec"]["nodeSelector"] == {vendor: "Intel"}
        assert head["rayStartParams"]["num-cpus"] == "0"
        workers = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
        # KubeRay pastes the value into `ray start --resources=...` in a shell.
        assert json.loads(json.loads(workers["cpu-amd"]["rayStartParams"]["resources"])) == {"amd_cpu": 1000}
        assert workers["cpu-amd-2"]["template"]["spec"]["nodeSelector"] == {vendor: "AMD"}
        images = {g: w["template"]["spec"]["containers"][0]["image"] for g, w in workers.items()}
        assert "llm-serving-amd@" in images["cpu-amd"] and "llm-serving-intel@" in images["cpu-intel"]
        # One Dockerfile, two images: the stack's buildArgs pick each one's engine.
        builds = {r.name: r.inputs["build"] for r in mocks.of_type(IMAGE_TYPE)}
        assert {name: build["args"] for name, build in builds.items()} == {
            "llm-serving-intel": {"ENGINE": "bigdl", "RAY_VERSION": "2.60.0", "PYTHON_VERSION": "3.11"},
            "llm-serving-amd": {"ENGINE": "onnxruntime", "RAY_VERSION": "2.60.0", "PYTHON_VERSION": "3.11"}}
        dockerfile = (REPO_ROOT / "images/cpu/Dockerfile").read_text()
        for name, build in builds.items():  # each build its own copy of the one Dockerfile
            assert build["dockerfile"] == f".cache/build-contexts/{name}/Dockerfile"
            assert (REPO_ROOT / build["dockerfile"]).read_text() == dockerfile
        assert [p["containerPort"] for p in workers["cpu-intel"]["template"]["spec"]["containers"][0]["ports"]
                if p["name"] == "serve"] == [8001]

    return after(deployment, check)


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_secret_values_only_in_their_secrets_and_always_secret(mocks, stack):
    use_config(stack_document(stack))
    deployment = main()
    encoded_password = base64.b64encode(f"llm-serving:{FAKE_REGISTRY_PASSWORD}".encode()).decode()

    def check():
        holders = {}
        for resource in mocks.resources:
            text = json.dumps(plain(resource.inputs))
            for label, value in (("token", FAKE_HF_TOKEN), ("password", FAKE_REGISTRY_PASSWORD),
                                 ("password", encoded_password)):
                if value in text:
                    holders.setdefault(label, set()).add((resource.type, resource.name))
        assert holders["token"] == {(SECRET, "secrets-hf-token")}
        # The push needs the password too (docker Image's registry input): kept a Pulumi secret there as well.
        images = {(IMAGE_TYPE, r.name) for r in mocks.of_type(IMAGE_TYPE)}
        assert holders["password"] == {(SECRET, "secrets-registry")} | images
        for resource in mocks.of_type(SECRET):
            assert rpc.is_rpc_secret(resource.inputs["stringData"]), resource.name
        for resource in mocks.of_type(IMAGE_TYPE):
            registry = resource.inputs["registry"]
            assert rpc.is_rpc_secret(registry) or rpc.is_rpc_secret(registry["password"])
        pull = [r for r in mocks.of_type(SECRET) if r.name == "secrets-registry"][0]
        assert pull.inputs["type"] == "kubernetes.io/dockerconfigjson"
        auths = json.loads(plain(pull.inputs["stringData"])[".dockerconfigjson"])["auths"]
        assert auths["registry.example.com"]["auth"] == encoded_password
        assert FAKE_HF_TOKEN not in ray_service_of(mocks)["spec"]["serveConfigV2"]

    return after(deployment, check)


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_stack_outputs_are_plaintext_and_hold_no_secret(mocks, stack):
    use_config(stack_document(stack))
    main()
    config = load_stack(stack)
    outputs = get_root_resource().outputs

    def check(values):
        named = dict(zip(outputs, values))
        assert named["namespace"] == config.namespace
        endpoints = named["endpoints"]
        assert set(endpoints) == {a.name for a in config.serve.applications}
        for app in config.serve.applications:
            endpoint = endpoints[app.name]
            assert (endpoint["routePrefix"], endpoint["port"], endpoint["service"]) == (
                app.route_prefix, config.serve.port, f"{config.ray_service.name}-serve")
        assert set(named["images"]) == {h.value for h in config.needed_hardware()}
        assert all("@sha256:" in ref for ref in named["images"].values())
        text = json.dumps(named)
        assert FAKE_HF_TOKEN not in text and FAKE_REGISTRY_PASSWORD not in text

    async def not_secret():
        for name, value in outputs.items():
            assert not await pulumi.Output.from_input(value).is_secret(), f"output {name} is secret"
        return True

    return pulumi.Output.all(pulumi.Output.all(*outputs.values()).apply(check), not_secret())


# ---- failing config stops the program before any resource ------------------------------------------------------


@pulumi.runtime.test
def test_bad_config_fails_before_anything_is_created(mocks):
    use_config(with_values("gpu", lambda v: v["serve"]["applications"][0]["args"].update(
        autoscaling_config={"max_replicas": 5})))
    with pytest.raises(pulumi.RunError, match=r"all replicas together need \{CPU: 100, GPU: 20\}"):
        main()
    use_config(with_values("cpu", lambda v: v["headGroup"].update(cpus=16)))
    with pytest.raises(pulumi.RunError, match=r"llm-serving:headGroup.cpus: Extra inputs are not permitted"):
        main()
    assert mocks.resources == []


@pulumi.runtime.test
def test_secret_structured_config_is_refused_as_the_cli_passes_it(mocks):
    # The CLI: values decrypted, their keys in PULUMI_CONFIG_SECRET_KEYS (set_all_config's second argument).
    pulumi.runtime.set_all_config(pulumi_config(stack_document("cpu")), SECRET_KEYS + ["llm-serving:modelStorage"])
    with pytest.raises(pulumi.RunError, match="llm-serving:modelStorage: only hfToken, registryPassword, apiKeys may "
                                              "be secret config"):
        main()
    assert mocks.resources == []


@pulumi.runtime.test
def test_registry_without_password_is_refused(mocks):
    pulumi.runtime.set_all_config({k: v for k, v in pulumi_config(stack_document("cpu")).items()
                                   if not k.endswith("registryPassword")}, SECRET_KEYS)
    with pytest.raises(pulumi.RunError, match="pulumi config set --secret registryPassword"):
        main()
    assert mocks.resources == []


# ---- stack options ----------------------------------------------------------------------------------------------


@pulumi.runtime.test
def test_existing_operator_namespace_claim_and_prebuilt_images(mocks):
    digest = "sha256:" + "b" * 64

    def edit(values):
        values["kuberay"]["stack"] = None  # installed outside Pulumi
        values["createNamespace"] = False
        values["modelStorage"] = {"existingClaim": "shared-models"}
        values["images"] = {hw: {"reference": f"example.com/{hw.lower()}@{digest}", "rayVersion": "2.60.0",
                                 "pythonVersion": "3.11"} for hw in ("INTEL", "AMD")}
        values.pop("registry")

    use_config(with_values("cpu", edit))
    deployment = main()

    def check():
        types = {r.type for r in mocks.resources}
        assert not [r for r in mocks.reads if r.inputs["id"].endswith("/kuberay")]  # no operator stack to check
        assert not types & {IMAGE_TYPE, "kubernetes:core/v1:Namespace",
                            "kubernetes:core/v1:PersistentVolume", "kubernetes:core/v1:PersistentVolumeClaim"}
        # no registry, no pull secret
        assert sorted(r.name for r in mocks.of_type(SECRET)) == ["api-keys", "secrets-hf-token"]  # registration order races
        spec = ray_service_of(mocks)["spec"]
        images = {c["image"] for c in containers(spec)}
        assert images == {f"example.com/intel@{digest}", f"example.com/amd@{digest}"}
        claims = {v["persistentVolumeClaim"]["claimName"] for g in [spec["rayClusterConfig"]["headGroupSpec"]]
                  for v in g["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {"shared-models"}
        assert "imagePullSecrets" not in spec["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]

    return after(deployment, check)


@pulumi.runtime.test
def test_exposure_and_upgrade_strategy_from_config(mocks):
    def edit(values):
        values["serve"]["service"] = {"type": "NodePort", "nodePort": 30801}
        values["dashboard"] = {"serviceType": "LoadBalancer", "auth": "token"}
        values["rayService"]["upgradeStrategy"] = {
            "type": "NewClusterWithIncrementalUpgrade",
            "clusterUpgradeOptions": {"gatewayClassName": "istio", "intervalSeconds": 30, "stepSizePercent": 25}}

    use_config(with_values("gpu", edit))
    deployment = main()

    def check():
        spec = ray_service_of(mocks)["spec"]
        assert spec["serveService"]["spec"] == {"type": "NodePort", "ports": [
            {"name": "serve", "port": 8000, "targetPort": 8000, "nodePort": 30801}]}
        assert spec["rayClusterConfig"]["headGroupSpec"]["serviceType"] == "LoadBalancer"
        assert spec["rayClusterConfig"]["authOptions"] == {"mode": "token"}
        assert spec["upgradeStrategy"] == {"type": "NewClusterWithIncrementalUpgrade", "clusterUpgradeOptions": {
            "gatewayClassName": "istio", "intervalSeconds": 30, "stepSizePercent": 25, "maxSurgePercent": 100}}
        # Gateway API must be there: preview reads the GatewayClass (and fails where it is not).
        assert [r.inputs["id"] for r in mocks.reads if r.type.endswith(":GatewayClass")] == ["istio"]

    return after(deployment, check)


def test_pulumi_timeouts_from_durations():
    assert [_minutes(d) for d in ("90m", "1h30m", "2h", "45s")] == ["90m", "90m", "120m", "1m"]

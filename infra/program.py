"""The Pulumi program: stack config -> checks -> components -> stack outputs. No stack names appear here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import pulumi
import pulumi_kubernetes as k8s
from pulumi.runtime import config as runtime_config

from .api_keys import ApiKeySecret, ApiKeySecretArgs, api_key_problems
from .checks import StackCheckError, pack_warnings, raise_for_problems, run_checks
from .config import (
    OperatorStackConfig, StackConfig, StackConfigError, is_operator_stack, parse_operator_stack_config,
    parse_stack_config,
)
from .docker_daemon import daemon_problem
from .images import ServingImages, ServingImagesArgs
from .kuberay import OUTPUT as OPERATOR_OUTPUT, KubeRayOperator, KubeRayOperatorArgs, operator_facts, require_server_side_apply
from .manifests import head_service_name, labels, serve_service_name
from .model_storage import ModelStorageArgs, ModelVolume
from .monitoring import Monitoring
from .operator_ref import operator_dependency
from .previous import OUTPUT as PREVIOUS_OUTPUT, previous_deployment
from .network_policy import RayNetworkPolicy
from .ray_service import LlmRayService, LlmRayServiceArgs
from .secrets import ServingSecrets, ServingSecretsArgs


def pulumi_config() -> dict[str, Any]:
    """Every config value of this run. Pulumi's Config API reads one key at a time; unknown keys must fail too."""
    merged = dict(runtime_config.get_config_env())
    merged.update(runtime_config.CONFIG.get())
    return merged


def secret_keys(config: dict[str, Any]) -> list[str]:
    """The keys Pulumi marks secret (PULUMI_CONFIG_SECRET_KEYS under the CLI)."""
    return [key for key in config if runtime_config.is_config_secret(key)]


def load() -> StackConfig:
    """The validated stack config; every failure names the config key path, before any resource exists."""
    try:
        config = pulumi_config()
        stack = parse_stack_config(config, pulumi.get_project(), secret_keys(config))
        raise_for_problems(run_checks(stack))
    except (StackConfigError, StackCheckError) as error:
        raise pulumi.RunError(str(error)) from None
    for warning in pack_warnings(stack):
        pulumi.log.warn(warning)
    return stack


@dataclass
class Deployment:
    """What the stack outputs are made of."""

    stack: StackConfig
    namespace: pulumi.Output[str]
    images: ServingImages
    ray_service: LlmRayService
    models: Optional[ModelVolume] = None


def deploy(stack: StackConfig, hf_token: Optional[pulumi.Input[str]],
           registry_password: Optional[pulumi.Input[str]], api_keys: Optional[pulumi.Input[str]] = None) -> Deployment:
    name = stack.ray_service.name
    previous = previous_deployment()
    depends: list[pulumi.Input[pulumi.Resource]] = []
    if stack.create_namespace:
        ns = k8s.core.v1.Namespace("namespace", metadata=k8s.meta.v1.ObjectMetaArgs(
            name=stack.namespace, labels=labels(stack, "namespace")))
        namespace: pulumi.Output[str] = ns.metadata.name
        depends.append(ns)
    else:
        namespace = pulumi.Output.from_input(stack.namespace)

    operator = operator_dependency(stack)
    if operator is not None:
        depends.append(operator)

    images = ServingImages("images", ServingImagesArgs(
        images={hardware: stack.images[hardware] for hardware in stack.needed_hardware()},
        ray_version=stack.ray_version, python_version=stack.python_version, tag=stack.image_tag(),
        registry=stack.registry, registry_password=registry_password))

    secrets = ServingSecrets("secrets", ServingSecretsArgs(
        namespace=namespace, name_prefix=name, labels=labels(stack, "secret"), hf_token=hf_token,
        registry=stack.registry, registry_password=registry_password))
    depends.append(secrets)
    api_keys_secret = None
    if api_keys is not None:
        api_keys_secret = ApiKeySecret("api-keys", ApiKeySecretArgs(
            namespace=namespace, name_prefix=name, labels=labels(stack, "secret"), api_keys=api_keys))
        depends.append(api_keys_secret)
    if stack.network_policy.enabled:
        depends.append(RayNetworkPolicy("network-policy", stack, namespace))

    models = None
    if stack.model_storage is not None:
        models = ModelVolume("models", ModelStorageArgs(
            storage=stack.model_storage, namespace=namespace, namespace_name=stack.namespace, name_prefix=name,
            labels=labels(stack, "models"), previous=previous))
        depends.append(models)

    ray_service = LlmRayService(name, LlmRayServiceArgs(
        stack=stack, namespace=namespace, images=images.refs, hf_secret_name=secrets.hf_secret_name,
        pull_secret_name=secrets.pull_secret_name, model_claim_name=models.claim_name if models else None,
        api_keys_secret_name=api_keys_secret.secret_name if api_keys_secret else None, depends_on=depends,
        previous=previous))
    if stack.monitoring.scrape == "podMonitor" or stack.monitoring.dashboards:
        Monitoring("monitoring", stack, namespace, pulumi.ResourceOptions(depends_on=depends))
    return Deployment(stack=stack, namespace=namespace, images=images, ray_service=ray_service, models=models)


def export_outputs(deployment: Deployment) -> None:
    stack = deployment.stack
    service, port = serve_service_name(stack), stack.serve.port
    pulumi.export("namespace", deployment.namespace)
    pulumi.export("rayService", stack.ray_service.name)
    pulumi.export("endpoints", deployment.namespace.apply(lambda ns: {
        app.name: {
            "routePrefix": app.route_prefix,
            "service": service,
            "port": port,
            "url": f"http://{service}.{ns}.svc.cluster.local:{port}{app.route_prefix}",
        }
        for app in stack.serve.applications
    }))
    pulumi.export("images", {hardware.value: ref for hardware, ref in deployment.images.refs.items()})
    # The dashboard stays inside the cluster; this is how to reach it.
    pulumi.export("dashboard", deployment.namespace.apply(
        lambda ns: f"kubectl -n {ns} port-forward svc/{head_service_name(stack)} 8265:8265"))
    # Read back by the next run (infra/previous.py).
    pulumi.export(PREVIOUS_OUTPUT, deployment.ray_service.facts.apply(lambda facts: {
        "rayService": facts, "modelStorage": deployment.models.facts if deployment.models else None}))


def require_docker_daemon(stack: StackConfig, probe: Callable[[Optional[str]], Optional[str]] = daemon_problem) -> None:
    """Images to build need the docker provider, which needs a daemon even to preview; say so, and the way around."""
    built = [f"images.{h.value}" for h in stack.needed_hardware() if h in stack.images and stack.images[h].dockerfile]
    if not built:
        return
    problem = probe(pulumi.Config("docker").get("host"))
    if problem is not None:
        raise pulumi.RunError(
            f"{', '.join(built)} are built from Dockerfiles, which needs a Docker daemon, and none answers ({problem}). "
            "Start Docker (or point DOCKER_HOST / `pulumi config set docker:host` at one), or build the images "
            "elsewhere and give each a prebuilt reference instead of its dockerfile (reference: "
            "<repository>@sha256:<digest>, with rayVersion and pythonVersion): preview and up then need no daemon")


def deploy_operator(stack: OperatorStackConfig) -> KubeRayOperator:
    """The operator stack: the KubeRay chart and its CRDs, once per cluster."""
    require_server_side_apply()
    options = stack.operator
    operator = KubeRayOperator("kuberay-operator", KubeRayOperatorArgs(namespace=options.namespace,
                                                                       values=options.values))
    pulumi.export(OPERATOR_OUTPUT, operator_facts(options.namespace))
    return operator


def main(check_docker_daemon: bool = False) -> Deployment | KubeRayOperator:
    """`check_docker_daemon`: the Pulumi CLI's run (the root __main__.py); render and the tests build nothing."""
    config = pulumi_config()
    if is_operator_stack(config, pulumi.get_project()):
        try:
            return deploy_operator(parse_operator_stack_config(config, pulumi.get_project(), secret_keys(config)))
        except StackConfigError as error:
            raise pulumi.RunError(str(error)) from None
    stack = load()
    if check_docker_daemon:
        require_docker_daemon(stack)
    config = pulumi.Config()
    hf_token = config.get_secret("hfToken")
    registry_password = config.get_secret("registryPassword")
    if hf_token is None and any(not args.model_name.startswith("/") for app in stack.serve.applications
                                for _, args in app.model_args()):
        pulumi.log.warn("no hfToken: gated hub models (e.g. Llama 2) will fail to download; "
                        "pulumi config set --secret hfToken <token>")
    if registry_password is None and stack.registry is not None:
        raise pulumi.RunError("registry is configured but registryPassword is not: "
                              "pulumi config set --secret registryPassword <password>")
    # Checked from the plain config value (Pulumi hands secrets to the program decrypted); messages never hold it.
    problems, warnings = api_key_problems(pulumi_config().get(f"{pulumi.get_project()}:apiKeys"),
                                          stack.serve.allow_unauthenticated)
    if problems:
        raise pulumi.RunError("\n".join(problems))
    for warning in warnings:
        pulumi.log.warn(warning)
    deployment = deploy(stack, hf_token, registry_password, config.get_secret("apiKeys"))
    export_outputs(deployment)
    return deployment

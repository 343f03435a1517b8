"""The RayService object, as plain data built from the typed config (no Pulumi import).

Image references may be plain strings (render) or Pulumi Outputs (the digests of pushed images): both are valid
inputs to a Kubernetes resource, so this one builder serves `pulumi up`, render and the tests.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from serving_app.auth import ENV as API_KEYS_KEY
from serving_app.auth import FILE_ENV as API_KEYS_FILE_ENV
from serving_app.enums import TargetDevice

from .autoscaler import autoscaler_fields, group_sizes, worker_groups_annotation
from .config import StackConfig
from .stack_sections import MODELS_MOUNT, NodeGroup

HF_TOKEN_KEY = "HF_TOKEN"
RAY_UID = 1000  # the `ray` user of images/*/Dockerfile
API_KEYS_MOUNT = "/etc/llm-serving/api-keys"

def labels(stack: StackConfig, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "llm-serving",
        "app.kubernetes.io/instance": stack.ray_service.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "pulumi",
    }


def ray_pod_selector(stack: StackConfig) -> dict[str, Any]:
    """Every Ray pod of this stack: two of our labels on the pod template (KubeRay 1.7 keeps them)."""
    ours = labels(stack, "ray-node")
    return {"matchLabels": {key: ours[key] for key in ("app.kubernetes.io/instance", "app.kubernetes.io/component")}}


def serve_service_name(stack: StackConfig) -> str:
    return f"{stack.ray_service.name}-serve"


def head_service_name(stack: StackConfig) -> str:
    # KubeRay names a RayService's stable head Service <name>-head-svc.
    return f"{stack.ray_service.name}-head-svc"


def _ray_start_params(group: NodeGroup, head: bool) -> dict[str, str]:
    params = {"num-cpus": f"{group.ray_capacity()['CPU']:g}", "num-gpus": str(group.gpus)}
    if group.ray_resources:
        # KubeRay pastes the value into a shell command line: a JSON object inside double quotes.
        amounts = {k: int(v) if float(v).is_integer() else v for k, v in group.ray_resources.items()}
        params["resources"] = json.dumps(json.dumps(amounts, sort_keys=True))
    if head:
        # Inside the pod; the head Service stays ClusterIP unless dashboard.serviceType says otherwise.
        params["dashboard-host"] = "0.0.0.0"
    return params


# Ray starts its workers (Serve replicas and the engines they spawn) at nice 15, so on a busy node they yield the
# CPU to Ray's own daemons and the engines lose throughput; a node group's `env` may still override it.
#
# Serve's high-throughput mode (Ray >= 2.56): HAProxy takes the serve port in place of the Python proxy actor, which
# alone kept a GPU replica below bare vLLM's throughput, and forwards to the replicas, which serve HTTP themselves
# (direct ingress); Serve's request path runs without its extra thread hop. Measurements: benchmarks/RESULTS.md.
#
# A replica killed outright (OOM killer, SIGKILL) would leave vLLM's EngineCore running, holding the GPU memory its
# replacement needs: with process-group cleanup the raylet kills each dead worker's whole process group.
RAY_SERVING_ENV = {"RAY_worker_niceness": "0", "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                   "RAY_process_group_cleanup_enabled": "1"}

# AMD GPUs: Ray and vLLM both narrow which GPUs a process sees, and a TP=4 replica fails when they disagree (vllm#12572:
# a rank with ROCR_VISIBLE_DEVICES=1 and CUDA_VISIBLE_DEVICES=0,1 dies with "HIP error: invalid device ordinal").
# Ray masks AMD GPUs with HIP_VISIBLE_DEVICES since ray PR #51104 (and raises if ROCR_VISIBLE_DEVICES is set at all);
# these switch its masking off, so every worker of the replica sees the node's GPUs and vLLM picks one by local rank
# (vllm PR #21522; vLLM's ROCm images set both). ROCR_VISIBLE_DEVICES is refused in a group's env (stack_sections).
HARDWARE_ENV = {TargetDevice.AMD_GPU: {"RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES": "1",
                                       "RAY_EXPERIMENTAL_NOSET_ROCR_VISIBLE_DEVICES": "1"}}

# Ports Ray itself binds on every pod (GCS, dashboard, client, metrics, dashboard agent used by KubeRay's probes);
# the serve port must be none of them.
RAY_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080, "dashboard-agent": 52365,
             # Serve's HAProxy ingress (RAY_SERVING_ENV)
             "HAProxy stats": 8404, "HAProxy metrics": 9101}
# With direct ingress the replicas serve HTTP and gRPC themselves on ports from these ranges.
DIRECT_INGRESS_PORTS = {"replica HTTP (direct ingress)": range(30000, 31000),
                        "replica gRPC (direct ingress)": range(40000, 41000)}


# stack.monitoring: the Ray dashboard's settings for its embedded Grafana charts (read by its metrics module on the
# head), by the option that sets them; and the pod annotations a plain Prometheus's kubernetes_sd config keeps.
MONITORING_HEAD_ENV = {"RAY_GRAFANA_HOST": "grafana_host", "RAY_GRAFANA_IFRAME_HOST": "grafana_iframe_host",
                       "RAY_PROMETHEUS_HOST": "prometheus_host"}


def monitoring_env(stack: StackConfig) -> dict[str, str]:
    values = {name: getattr(stack.monitoring, option) for name, option in MONITORING_HEAD_ENV.items()}
    return {name: value for name, value in values.items() if value is not None}


def scrape_annotations(stack: StackConfig) -> dict[str, str]:
    if stack.monitoring.scrape != "annotations":
        return {}
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(RAY_PORTS["metrics"]),
            "prometheus.io/path": "/metrics"}


def _container_ports(stack: StackConfig, head: bool) -> list[dict[str, Any]]:
    ports = []
    if head:
        ports += [{"name": name, "containerPort": RAY_PORTS[name]} for name in ("gcs-server", "dashboard", "client")]
    ports.append({"name": "metrics", "containerPort": RAY_PORTS["metrics"]})
    ports.append({"name": "serve", "containerPort": stack.serve.port})
    return ports


def pod_template(
    stack: StackConfig,
    group_name: str,
    group: NodeGroup,
    *,
    image: Any,
    head: bool,
    hf_secret_name: Optional[str],
    pull_secret_name: Optional[str],
    model_claim_name: Optional[str],
    api_keys_secret_name: Optional[str] = None,
) -> dict[str, Any]:
    resources: dict[str, Any] = {"cpu": str(group.cpu), "memory": group.memory}
    if group.gpus:
        resources[group.gpu_resource] = str(group.gpus)
    env: list[dict[str, Any]] = []
    if hf_secret_name:
        env.append({"name": HF_TOKEN_KEY,
                    "valueFrom": {"secretKeyRef": {"name": hf_secret_name, "key": HF_TOKEN_KEY}}})
    if api_keys_secret_name:
        # The serving API's keys (infra/api_keys.py) as a file the kubelet updates when the Secret changes, which the
        # replicas re-read (serving_app/auth.py): a rotation needs no restart, as an env var from the Secret would.
        env.append({"name": API_KEYS_FILE_ENV, "value": f"{API_KEYS_MOUNT}/{API_KEYS_KEY}"})
    storage = stack.model_storage
    if storage is not None and storage.hf_cache_dir:
        env.append({"name": "HF_HOME", "value": storage.hf_cache_dir})
    defaults = {**RAY_SERVING_ENV, **HARDWARE_ENV.get(group.hardware, {}), **(monitoring_env(stack) if head else {})}
    env += [{"name": name, "value": value} for name, value in sorted(defaults.items()) if name not in group.env]
    env += [{"name": name, "value": value} for name, value in sorted(group.env.items())]

    mounts = [
        {"name": "ray-logs", "mountPath": "/tmp/ray"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "ray-logs", "emptyDir": {"sizeLimit": group.ray_tmp_size}},
        # Memory-backed and counted against the pod's memory limit.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": group.shm_size}},
    ]
    if api_keys_secret_name:
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_MOUNT, "readOnly": True})  # not subPath: it never updates
        volumes.append({"name": "api-keys", "secret": {"secretName": api_keys_secret_name, "defaultMode": 0o440}})
    if model_claim_name:
        read_only = storage.read_only if storage is not None else True
        mounts.append({"name": "models", "mountPath": MODELS_MOUNT, "readOnly": read_only})
        volumes.append({"name": "models",
                        "persistentVolumeClaim": {"claimName": model_claim_name, "readOnly": read_only}})

    container: dict[str, Any] = {
        "name": "ray-head" if head else "ray-worker",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "ports": _container_ports(stack, head),
        # requests = limits: Guaranteed QoS, so the kubelet never evicts a loaded model for memory pressure.
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "volumeMounts": mounts,
        # Ray drains its actors before the container goes.
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}},
        # Ray needs no Linux capability; without them a compromised worker cannot raise its own privileges.
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    pod_security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if group.supplemental_groups:
        pod_security["supplementalGroups"] = list(group.supplemental_groups)
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": pod_security,
        # A 70B replica needs time to drain in-flight streams and free its GPUs.
        "terminationGracePeriodSeconds": 120,
    }
    if group.node_selector:
        spec["nodeSelector"] = dict(group.node_selector)
    if group.tolerations:
        spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in group.tolerations]
    if group.runtime_class_name:
        spec["runtimeClassName"] = group.runtime_class_name
    if pull_secret_name:
        spec["imagePullSecrets"] = [{"name": pull_secret_name}]
    metadata: dict[str, Any] = {"labels": {**labels(stack, "ray-node"), "llm-serving/node-group": group_name}}
    if scrape_annotations(stack):
        metadata["annotations"] = scrape_annotations(stack)
    return {"metadata": metadata, "spec": spec}


def ray_service_spec(
    stack: StackConfig,
    *,
    images: Mapping[TargetDevice, Any],
    serve_config_yaml: str,
    hf_secret_name: Optional[str],
    pull_secret_name: Optional[str],
    model_claim_name: Optional[str],
    api_keys_secret_name: Optional[str] = None,
) -> dict[str, Any]:
    common = dict(hf_secret_name=hf_secret_name, pull_secret_name=pull_secret_name,
                  model_claim_name=model_claim_name, api_keys_secret_name=api_keys_secret_name)
    head = stack.head_group
    cluster: dict[str, Any] = {
        "rayVersion": stack.ray_version,
        "headGroupSpec": {
            "serviceType": stack.dashboard.service_type,
            "rayStartParams": _ray_start_params(head, head=True),
            "template": pod_template(stack, "head", head, image=images[head.hardware], head=True, **common),
        },
        "workerGroupSpecs": [
            {
                "groupName": group.name,
                # Fixed where min = max; else KubeRay's autoscaler owns the count (infra/autoscaler.py).
                **group_sizes(group),
                "rayStartParams": _ray_start_params(group, head=False),
                "template": pod_template(stack, group.name, group, image=images[group.hardware], head=False,
                                         **common),
            }
            for group in stack.worker_groups
            if group.enabled
        ],
    }
    cluster.update(autoscaler_fields(stack))
    if stack.dashboard.auth == "token":
        cluster["authOptions"] = {"mode": "token"}

    service_port: dict[str, Any] = {"name": "serve", "port": stack.serve.port, "targetPort": stack.serve.port}
    if stack.serve.service.node_port is not None:
        service_port["nodePort"] = stack.serve.service.node_port
    upgrade = stack.ray_service.upgrade_strategy
    upgrade_spec: dict[str, Any] = {"type": upgrade.type}
    if upgrade.cluster_upgrade_options is not None:
        upgrade_spec["clusterUpgradeOptions"] = upgrade.cluster_upgrade_options.model_dump(by_alias=True)
    return {
        "upgradeStrategy": upgrade_spec,
        "serveConfigV2": serve_config_yaml,
        # KubeRay keeps this Service's selector on the cluster that serves, also during upgrades.
        "serveService": {
            "metadata": {
                "name": serve_service_name(stack),
                "labels": labels(stack, "serve"),
                **({"annotations": dict(stack.serve.service.annotations)} if stack.serve.service.annotations else {}),
            },
            "spec": {"type": stack.serve.service.type, "ports": [service_port]},
        },
        "rayClusterConfig": cluster,
    }


def ray_service_annotations(stack: StackConfig) -> dict[str, str]:
    """The plain annotations; infra/ray_service.py adds what `pulumi up` waits for (infra/rollout.py) and keeps the
    worker-groups one across appended groups (infra/replacement.py)."""
    return {
        "ray.io/initializing-timeout": stack.ray_service.initializing_timeout,
        **worker_groups_annotation(stack),
    }

"""The sections of a stack file (node groups, images, model storage, Serve, dashboard, RayService options), one
strict pydantic model each; `infra.config.StackConfig` puts them together."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from serving_app.enums import TargetDevice
from serving_app.multi_model import MultiModelArgs
from serving_app.placement import replica_demand
from serving_app.serve_args import ServeArgs

MODELS_MOUNT = "/models"
GPU_RESOURCE_NAMES = {TargetDevice.NVIDIA: "nvidia.com/gpu", TargetDevice.AMD_GPU: "amd.com/gpu"}
# Hardware a node group can be; TargetDevice.CPU (vLLM's CPU build) is for local mode only.
CLUSTER_HARDWARE = (TargetDevice.NVIDIA, TargetDevice.AMD_GPU, TargetDevice.INTEL, TargetDevice.AMD)

# Build args the program always passes (asserted by the Dockerfiles), by the stack key they come from.
RESERVED_BUILD_ARGS = {"RAY_VERSION": "rayVersion", "PYTHON_VERSION": "pythonVersion"}

QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DURATION = r"^([0-9]+(h|m|s))+$"


class StrictModel(BaseModel):
    """camelCase keys as written in the stack files; an unknown key is an error, not ignored."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class Toleration(StrictModel):
    key: Optional[str] = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: Optional[str] = None
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = None
    toleration_seconds: Optional[int] = None


class NodeGroup(StrictModel):
    """One kind of Ray node: pod size (requests = limits) and what Ray may schedule on it."""

    hardware: TargetDevice
    cpu: int = Field(gt=0, description="CPU cores of the pod; also Ray's num-cpus unless rayCpus is set.")
    memory: str = Field(pattern=QUANTITY)
    gpus: int = Field(default=0, ge=0)
    gpu_model: Optional[str] = Field(default=None, description="GPU model, one of serving_app.gpu_memory.GPU_MODELS "
                                     "(e.g. H200): the preview checks FP8 support and each replica's memory with it.")
    gpu_memory: Optional[str] = Field(default=None, pattern=QUANTITY, description="Memory per GPU as CUDA reports it "
                                      "(e.g. 139Gi), for a GPU not in GPU_MODELS or instead of its figure.")
    gpu_resource: Optional[str] = Field(default=None, description="Kubernetes extended resource; from hardware.")
    ray_cpus: Optional[float] = Field(default=None, ge=0, description="Ray num-cpus; 0 keeps replicas off.")
    ray_resources: dict[str, float] = Field(default_factory=dict, description="Ray custom resources per node.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    runtime_class_name: Optional[str] = None
    # vLLM's tensor-parallel workers exchange tensors through /dev/shm; Docker's 64M default is far too small.
    shm_size: str = Field(default="16Gi", pattern=QUANTITY)
    ray_tmp_size: str = Field(default="50Gi", pattern=QUANTITY)
    supplemental_groups: list[int] = Field(default_factory=list, description="e.g. video/render for ROCm.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra non-secret environment variables.")

    @field_validator("ray_resources")
    @classmethod
    def _custom_only(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(f"{name}: set with cpu / gpus / rayCpus, not as a custom resource")
            if amount <= 0:
                raise ValueError(f"{name} must be positive, got {amount}")
        return value

    @field_validator("env")
    @classmethod
    def _no_secrets_in_env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name == "HF_TOKEN" or any(word in name.upper() for word in ("TOKEN", "PASSWORD", "SECRET")):
                raise ValueError(f"{name}: secrets come from secret config (hfToken), never from plain env")
        return value

    @model_validator(mode="after")
    def _gpus_match_hardware(self) -> "NodeGroup":
        if self.hardware not in CLUSTER_HARDWARE:
            raise ValueError(f"hardware {self.hardware.value!r} is for local mode; use one of "
                             f"{', '.join(h.value for h in CLUSTER_HARDWARE)}")
        if self.hardware.is_gpu and self.gpus < 1:
            raise ValueError(f"a {self.hardware.value} node group needs gpus >= 1")
        if not self.hardware.is_gpu and self.gpus:
            raise ValueError(f"gpus must be 0 on CPU hardware {self.hardware.value}")
        if self.gpu_resource is None and self.hardware.is_gpu:
            self.gpu_resource = GPU_RESOURCE_NAMES[self.hardware]
        if self.hardware == TargetDevice.AMD_GPU and "ROCR_VISIBLE_DEVICES" in self.env:
            raise ValueError("env.ROCR_VISIBLE_DEVICES: Ray refuses to start with it set (it masks AMD GPUs with "
                             "HIP_VISIBLE_DEVICES, and the pods switch that off for vLLM: infra/manifests.py)")
        return self

    def ray_capacity(self) -> dict[str, float]:
        """What Ray on one node of this group can hand out (num-cpus, num-gpus, custom resources)."""
        capacity = {"CPU": float(self.cpu if self.ray_cpus is None else self.ray_cpus)}
        if self.gpus:
            capacity["GPU"] = float(self.gpus)
        capacity.update(self.ray_resources)
        return capacity


class WorkerGroup(NodeGroup):
    name: str = Field(pattern=DNS_LABEL, max_length=40)
    replicas: int = Field(default=1, ge=0, description="Pods at creation; default: minReplicas where that is set.")
    # KubeRay's in-tree autoscaler adds and removes pods between these (infra/autoscaler.py); unset: fixed size.
    min_replicas: Optional[int] = Field(default=None, ge=0)
    max_replicas: Optional[int] = Field(default=None, ge=0)
    # A disabled entry stays validated (so enabling it is safe) but deploys nothing.
    enabled: bool = True

    @model_validator(mode="after")
    def _size_range(self) -> "WorkerGroup":
        if "replicas" not in self.model_fields_set and self.min_replicas is not None:
            self.replicas = self.min_replicas
        low, high = self.size_range
        if not low <= self.replicas <= high:
            raise ValueError(f"replicas {self.replicas} is outside minReplicas..maxReplicas ({low}..{high})")
        return self

    @property
    def size_range(self) -> tuple[int, int]:
        """(fewest, most) pods of this group."""
        low = self.replicas if self.min_replicas is None else self.min_replicas
        return low, self.replicas if self.max_replicas is None else self.max_replicas

    @property
    def autoscales(self) -> bool:
        low, high = self.size_range
        return self.enabled and high > low


class Autoscaler(StrictModel):
    """KubeRay's in-tree autoscaler (a sidecar of the head pod); on wherever a worker group's minReplicas is below its
    maxReplicas. It adds a group's pod when replicas Serve wants cannot be placed, and removes one idle for
    idleTimeoutSeconds."""

    idle_timeout_seconds: int = Field(default=60, ge=0, description="KubeRay's default: 60.")
    upscaling_mode: Literal["Default", "Aggressive", "Conservative"] = "Default"
    version: Optional[Literal["v1", "v2"]] = Field(default=None, description="Default: KubeRay's choice.")
    # The sidecar's own pod resources (requests = limits, as every container here): KubeRay's defaults.
    cpu: str = Field(default="500m", pattern=r"^[0-9]+(\.[0-9]+)?m?$")
    memory: str = Field(default="512Mi", pattern=QUANTITY)


class ImageSpec(StrictModel):
    """One serving image: built from a Dockerfile in this repository, or a prebuilt reference by digest."""

    dockerfile: Optional[str] = Field(default=None, description="Path from the repository root.")
    reference: Optional[str] = Field(default=None, description="Prebuilt image, repository@sha256:...")
    ray_version: Optional[str] = Field(default=None, description="Prebuilt only: the Ray the image carries.")
    python_version: Optional[str] = Field(
        default=None, pattern=r"^3\.\d+$",
        description="The image's Python X.Y: a prebuilt one's, or a build's whose buildArgs pick another base than "
                    "the Dockerfile's (default: its ARG PYTHON_VERSION).")
    platform: str = "linux/amd64"
    build_args: dict[str, str] = Field(
        default_factory=dict, description="Docker build args, e.g. {ENGINE: bigdl}; merged with Ray/Python's."
    )

    def docker_build_args(self, ray_version: str, python_version: str) -> dict[str, str]:
        """What the build gets: buildArgs plus the stack's versions (which the Dockerfiles assert)."""
        return {**self.build_args, "RAY_VERSION": ray_version, "PYTHON_VERSION": python_version}

    @field_validator("build_args")
    @classmethod
    def _user_build_args(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name}: not a Dockerfile ARG name (letters, digits, _)")
            if name in RESERVED_BUILD_ARGS:
                # The program passes the stack's versions and the build asserts them: one source of truth.
                raise ValueError(f"{name}: set from the stack's {RESERVED_BUILD_ARGS[name]}, not in buildArgs")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "ImageSpec":
        if (self.dockerfile is None) == (self.reference is None):
            raise ValueError("give exactly one of dockerfile (build and push) or reference (prebuilt)")
        if self.reference is not None:
            if not re.search(r"@sha256:[0-9a-f]{64}$", self.reference):
                raise ValueError("reference must pin a digest (repository@sha256:<64 hex>) so pods run what was tested")
            if self.ray_version is None or self.python_version is None:
                raise ValueError("a prebuilt reference must declare rayVersion and pythonVersion (checked)")
            if self.build_args:
                raise ValueError("buildArgs applies to a dockerfile build, not a prebuilt reference")
        elif self.ray_version is not None:
            raise ValueError("rayVersion is read from the Dockerfile's requirements; set it only for a reference")
        return self


class Registry(StrictModel):
    server: str = Field(min_length=1, description="Registry host, e.g. registry.example.com")
    repository: str = Field(min_length=1, description="Image name prefix, e.g. registry.example.com/llm")
    username: str = Field(min_length=1)
    tag: Optional[str] = Field(default=None, description="Defaults to ray<rayVersion>-py<pythonVersion>.")


class KubeRay(StrictModel):
    """A serving stack's KubeRay operator: installed once per cluster by its own stack (Pulumi.kuberay.yaml), so
    destroying a serving stack never removes what another uses. Preview checks the named stack is up, runs the chart
    version this program writes RayServices for, and in `namespace` (where the NetworkPolicy lets the operator in)."""

    stack: Optional[str] = Field(default="kuberay", min_length=1,
                                 description="The operator's stack; null: installed outside Pulumi, not checked.")
    namespace: str = Field(default="kuberay-system", pattern=DNS_LABEL)

    @model_validator(mode="before")
    @classmethod
    def _installed_elsewhere(cls, data: Any) -> Any:
        if isinstance(data, dict) and {"install", "values"} & set(data):
            raise ValueError("install/values: the operator is installed by its own stack now, once per cluster "
                             "(Pulumi.kuberay.yaml, llm-serving:operator); name that stack here: {stack: kuberay}")
        return data


class KubeRayOperatorOptions(StrictModel):
    """The operator stack's section: the KubeRay Helm chart (infra.config.KUBERAY_CHART_VERSION) and its CRDs."""

    namespace: str = Field(default="kuberay-system", pattern=DNS_LABEL)
    values: dict[str, Any] = Field(default_factory=dict, description="Extra Helm values.")


class NfsVolume(StrictModel):
    server: str = Field(min_length=1)
    path: str = Field(pattern=r"^/")
    size: str = Field(pattern=QUANTITY)
    access_mode: Literal["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce"] = "ReadOnlyMany"
    mount_options: list[str] = Field(default_factory=list)


class ModelStorage(StrictModel):
    nfs: Optional[NfsVolume] = None
    existing_claim: Optional[str] = Field(default=None, pattern=DNS_LABEL)
    read_only: bool = True
    hf_cache_dir: Optional[str] = Field(
        default=None, description="HF_HOME under /models, so hub downloads survive pod restarts (needs writes)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> "ModelStorage":
        if (self.nfs is None) == (self.existing_claim is None):
            raise ValueError("give exactly one of nfs (a new PersistentVolume) or existingClaim")
        if self.nfs is not None and self.nfs.access_mode == "ReadOnlyMany" and not self.read_only:
            raise ValueError("readOnly: false needs nfs.accessMode ReadWriteMany or ReadWriteOnce")
        if self.hf_cache_dir is not None:
            if not self.hf_cache_dir.startswith(MODELS_MOUNT + "/"):
                raise ValueError(f"hfCacheDir must be under {MODELS_MOUNT}/")
            if self.read_only:
                raise ValueError("hfCacheDir needs a writable volume (readOnly: false)")
        return self


@dataclass(frozen=True)
class AppDeployment:
    """One deployment of an application as the checks see it: where the stack file declares it, what one replica
    reserves, its (fewest, most) replicas, and its model's serve args (None for the router of several models)."""

    where: str
    demand: dict[str, float]
    replica_range: tuple[int, int]
    args: Optional[ServeArgs]


class ServeApp(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][-A-Za-z0-9_]*$")
    route_prefix: str = Field(pattern=r"^/")
    args: Optional[ServeArgs] = Field(default=None, description="One model: serving_app:typed_app_builder's args.")
    multi_model: Optional[MultiModelArgs] = Field(
        default=None, description="Several models behind this route, chosen by the request's `model`: "
                                  "serving_app:multi_model_app_builder's args (models, default_model, router).")
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="Ray runtime_env (no secrets).")

    @model_validator(mode="after")
    def _one_kind(self) -> "ServeApp":
        if (self.args is None) == (self.multi_model is None):
            raise ValueError("give args (one model) or multiModel (several models behind this route), not "
                             + ("both" if self.args is not None else "neither"))
        return self

    def model_args(self) -> list[tuple[str, ServeArgs]]:
        """(stack-file path under the application, serve args) of each model this application serves."""
        if self.args is not None:
            return [("args", self.args)]
        assert self.multi_model is not None
        return [(f"multiModel.models[{index}]", args) for index, args in enumerate(self.multi_model.models)]

    def describe(self, index: int, where: str = "args") -> str:
        """How problems name this application (and, of several models, which one)."""
        return f"serve.applications[{index}] ({self.name})" + (f".{where}" if self.multi_model is not None else "")

    def deployments(self) -> list[AppDeployment]:
        """Every deployment whose replicas reserve resources: each model's, and the router's if it reserves CPUs."""
        found = [AppDeployment(where, replica_demand(args), args.replica_range, args)
                 for where, args in self.model_args()]
        if self.multi_model is not None and self.multi_model.router.num_cpus > 0:
            router = self.multi_model.router
            found.append(AppDeployment("multiModel.router", {"CPU": router.num_cpus}, router.replica_range, None))
        return found

    @field_validator("runtime_env")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in (value.get("env_vars") or {}):
            if any(word in name.upper() for word in ("TOKEN", "PASSWORD", "SECRET")):
                raise ValueError(f"env_vars.{name}: secrets never go into serveConfigV2 (HF_TOKEN is injected)")
        return value


ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]


class ServeService(StrictModel):
    type: ServiceType = "ClusterIP"
    node_port: Optional[int] = Field(default=None, ge=30000, le=32767)
    annotations: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _node_port(self) -> "ServeService":
        if self.node_port is not None and self.type == "ClusterIP":
            raise ValueError("nodePort needs type NodePort or LoadBalancer")
        return self


class Serve(StrictModel):
    port: int = Field(default=8000, ge=1024, le=65535)
    service: ServeService = Field(default_factory=ServeService)
    applications: list[ServeApp] = Field(min_length=1)
    allow_unauthenticated: bool = Field(
        default=False, description="Serve without API keys (secret config apiKeys); preview warns."
    )


class NetworkPolicyOptions(StrictModel):
    """Who may reach the Ray pods: each other (Ray's own ports), the operator (dashboard, agent, serve port), the
    serve port from `serveFrom`, metrics from `metricsFrom`; peers are Kubernetes NetworkPolicyPeer objects."""

    enabled: bool = True
    serve_from: list[dict[str, Any]] = Field(default_factory=list, description="Peers of the serve port; [] = any.")
    metrics_from: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"namespaceSelector": {}}], description="Peers of the metrics port; default: pods."
    )


# Kubernetes label syntax: an optional DNS-subdomain prefix and a name of at most 63 characters; values likewise.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$")
LABEL_VALUE = re.compile(rf"^({_LABEL_NAME})?$")
HTTP_URL = r"^https?://[^\s/]+(/\S*)?$"


class Monitoring(StrictModel):
    """How the cluster's monitoring reaches the serving metrics (every Ray pod's port 8080) and dashboards; all off
    unless a stack turns it on (infra/monitoring_spec.py)."""

    scrape: Literal["none", "podMonitor", "annotations"] = Field(
        default="none", description="podMonitor: the Prometheus operator's PodMonitor (its CRD must be installed, "
                                    "checked at preview); annotations: prometheus.io/* on the pods.")
    pod_monitor_labels: dict[str, str] = Field(
        default_factory=lambda: {"release": "prometheus"},
        description="Labels the operator's podMonitorSelector matches (kube-prometheus-stack: release: <release>).")
    scrape_interval: str = Field(default="15s", pattern=DURATION)
    dashboards: bool = Field(default=False, description="ConfigMaps for Grafana's dashboard sidecar.")
    dashboards_namespace: Optional[str] = Field(default=None, pattern=DNS_LABEL,
                                                description="Where they go; default: the stack's namespace.")
    dashboard_labels: dict[str, str] = Field(default_factory=lambda: {"grafana_dashboard": "1"},
                                             description="The sidecar's label (kube-prometheus-stack's default).")
    gpu_panels: Optional[bool] = Field(default=None, description="The DCGM exporter's GPU row; default: where an "
                                                                 "NVIDIA node group deploys.")
    grafana_host: Optional[str] = Field(default=None, pattern=HTTP_URL, description="RAY_GRAFANA_HOST on the head.")
    grafana_iframe_host: Optional[str] = Field(default=None, pattern=HTTP_URL,
                                               description="RAY_GRAFANA_IFRAME_HOST: Grafana as browsers reach it.")
    prometheus_host: Optional[str] = Field(default=None, pattern=HTTP_URL, description="RAY_PROMETHEUS_HOST.")

    @field_validator("pod_monitor_labels", "dashboard_labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not LABEL_KEY.match(key):
                raise ValueError(f"{key!r} is not a Kubernetes label key")
            if not LABEL_VALUE.match(label):
                raise ValueError(f"{key}: {label!r} is not a Kubernetes label value")
        return value

    @model_validator(mode="after")
    def _iframe_needs_host(self) -> "Monitoring":
        if self.grafana_iframe_host is not None and self.grafana_host is None:
            raise ValueError("grafanaIframeHost: needs grafanaHost (the head's own way to Grafana) too")
        return self


class Dashboard(StrictModel):
    # The dashboard accepts job submissions (arbitrary code) without authentication unless token auth is on.
    service_type: ServiceType = "ClusterIP"
    # KubeRay's token authentication (authOptions): the dashboard, Jobs API and GCS refuse callers without the
    # cluster's token; the operator reads the token from the Secret it creates, health endpoints stay open.
    auth: Literal["disabled", "token"] = "token"
    allow_unauthenticated_exposure: bool = False

    @model_validator(mode="after")
    def _not_public_without_auth(self) -> "Dashboard":
        if self.service_type != "ClusterIP" and self.auth != "token" and not self.allow_unauthenticated_exposure:
            raise ValueError(
                f"serviceType {self.service_type} exposes the Ray dashboard, which runs submitted jobs without "
                "authentication; set auth: token, or allowUnauthenticatedExposure: true to accept that"
            )
        return self


class IncrementalUpgradeOptions(StrictModel):
    gateway_class_name: str
    interval_seconds: int = Field(ge=1)
    step_size_percent: int = Field(ge=1, le=100)
    max_surge_percent: int = Field(default=100, ge=1, le=100)

    @model_validator(mode="after")
    def _step_within_surge(self) -> "IncrementalUpgradeOptions":
        if self.step_size_percent > self.max_surge_percent:  # KubeRay's ValidateClusterUpgradeOptions
            raise ValueError("stepSizePercent must be less than or equal to maxSurgePercent")
        return self


class UpgradeStrategy(StrictModel):
    # None: never a second cluster (no 2x GPUs); a rayClusterConfig change makes Pulumi replace the RayService.
    type: Literal["None", "NewCluster", "NewClusterWithIncrementalUpgrade"] = "None"
    cluster_upgrade_options: Optional[IncrementalUpgradeOptions] = None

    @model_validator(mode="after")
    def _options(self) -> "UpgradeStrategy":
        incremental = self.type == "NewClusterWithIncrementalUpgrade"
        if incremental and self.cluster_upgrade_options is None:
            raise ValueError("NewClusterWithIncrementalUpgrade needs clusterUpgradeOptions (Gateway API class etc.)")
        if not incremental and self.cluster_upgrade_options is not None:
            raise ValueError("clusterUpgradeOptions only applies to NewClusterWithIncrementalUpgrade")
        return self


def duration_seconds(duration: str) -> int:
    """Go-style 1h30m in seconds."""
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"(\d+)([hms])", duration))


class RayServiceOptions(StrictModel):
    name: str = Field(default="llm-serving", pattern=DNS_LABEL, max_length=40)
    upgrade_strategy: UpgradeStrategy = Field(default_factory=UpgradeStrategy)
    # A RayService not ready by then is given up for good by KubeRay 1.7 (terminal: clusters deleted, later changes
    # ignored); the next `pulumi up` replaces it (infra/replacement.py). A 70B load from NFS takes a while.
    initializing_timeout: str = Field(default="60m", pattern=DURATION)
    # How long `pulumi up` waits for the new config to settle (infra/rollout.py).
    pulumi_timeout: str = Field(default="90m", pattern=DURATION)

    @model_validator(mode="after")
    def _pulumi_waits_for_kuberays_verdict(self) -> "RayServiceOptions":
        # Else `up` can stop waiting before KubeRay gives up, and the next `up` would not know to replace it.
        if duration_seconds(self.pulumi_timeout) <= duration_seconds(self.initializing_timeout):
            raise ValueError(f"pulumiTimeout {self.pulumi_timeout} must be longer than initializingTimeout "
                             f"{self.initializing_timeout}")
        return self

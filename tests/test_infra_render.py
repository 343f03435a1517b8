"""Offline render: the manifests each stack would apply, validated against the KubeRay 1.7.0 CRD schema and
Kubernetes' own schemas; no secret value in any file."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pulumi
import pytest
import yaml

from infra.config import REPO_ROOT, load_stack
from infra.render import REDACTED, render
from infra.rollout import with_config_marker
from infra.serve_config import serve_config
from tests.infra_helpers import STACKS, with_values
from tests.manifests import K8S_VERSION, documents, rayservice_validator

BUILT_IN_GROUPS = ("v1", "apps/v1", "rbac.authorization.k8s.io/v1")


@pytest.fixture(scope="module", params=STACKS)
def rendered(request, tmp_path_factory) -> tuple[str, list[Path]]:
    out = tmp_path_factory.mktemp(f"render-{request.param}")
    return request.param, render(request.param, out)


def test_rayservice_validates_against_kuberay_crd(rendered):
    stack, paths = rendered
    (service,) = [d for d in documents(paths) if d["kind"] == "RayService"]
    rayservice_validator().validate(service)
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == with_config_marker(serve_config(load_stack(stack)))[0]


def test_schema_check_catches_unknown_and_mistyped_fields(rendered):
    _, paths = rendered
    (service,) = [d for d in documents(paths) if d["kind"] == "RayService"]
    bad = copy.deepcopy(service)
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    with pytest.raises(jsonschema.ValidationError, match="rayStartParam"):
        rayservice_validator().validate(bad)
    bad = copy.deepcopy(service)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "1"
    with pytest.raises(jsonschema.ValidationError):
        rayservice_validator().validate(bad)


def test_built_in_kinds_validate(rendered):
    _, paths = rendered
    kinds = []
    for document in documents(paths):
        if document["apiVersion"] in BUILT_IN_GROUPS:
            kubernetes_validate.validate(document, K8S_VERSION, strict=True)
            kinds.append(document["kind"])
    assert {"Namespace", "Secret", "PersistentVolume", "PersistentVolumeClaim"} <= set(kinds)


def test_kubernetes_validate_rejects_unknown_fields():
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"},
                                      "spex": {}}, K8S_VERSION, strict=True)


def test_no_secret_value_is_written(rendered):
    _, paths = rendered
    text = "\n".join(p.read_text() for p in paths)
    # Render feeds placeholders for the secret config; they must not survive either.
    assert "<hfToken>" not in text and "<registryPassword>" not in text
    secrets = [d for d in documents(paths) if d["kind"] == "Secret"]
    assert {s["type"] for s in secrets} == {"Opaque", "kubernetes.io/dockerconfigjson"}
    for secret in secrets:
        assert set(secret["stringData"].values()) == {REDACTED}
        assert "data" not in secret


def test_the_operator_is_rendered_by_its_own_stack_as_a_pinned_helm_release(tmp_path):
    by_kind = {d["kind"]: d for d in documents(render("kuberay", tmp_path))}
    chart = by_kind["HelmRelease"]["spec"]["chart"]["spec"]
    assert (chart["chart"], chart["version"]) == ("kuberay-operator", "1.7.0")
    # Flux, like the program, upgrades the chart's CRDs with it (Helm alone installs them once).
    assert by_kind["HelmRelease"]["spec"]["upgrade"] == {"crds": "CreateReplace"}
    assert by_kind["HelmRepository"]["spec"]["url"] == "https://ray-project.github.io/kuberay-helm/"
    assert by_kind["Namespace"]["metadata"]["name"] == "kuberay-system"


def test_render_replaces_an_earlier_renders_files(tmp_path):
    (tmp_path / "09-secret-gone.yaml").write_text("kind: Secret\n")
    (tmp_path / "notes.txt").write_text("mine\n")
    written = render("cpu", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in written] + ["notes.txt"])


def test_render_runs_the_checks(tmp_path):
    bad = with_values("cpu", lambda v: v["serve"]["applications"][0]["args"].update(num_cpus=999))
    (tmp_path / "Pulumi.bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(pulumi.RunError, match=r"serve.applications\[0\] \(llama2-cpu-intel\): one replica needs"):
        render("bad", tmp_path / "out", root=tmp_path)
    assert not (tmp_path / "out").exists()


def test_render_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "infra", "render", "--stack", "gpu", "--out", str(tmp_path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(Path(line).name for line in result.stdout.split())
    assert any(name.endswith("rayservice-llm-serving.yaml") for name in names)


def test_ray_workers_run_at_normal_priority_behind_haproxy(rendered):
    """Every Ray container runs its workers at nice 0 behind Serve's HAProxy ingress, and a dead worker's processes
    go with it (why: RAY_SERVING_ENV in infra/manifests.py)."""
    _, paths = rendered
    spec = next(doc for doc in documents(paths) if doc["kind"] == "RayService")["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", [])
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {item["name"]: item.get("value") for item in container["env"]}
            assert env.get("RAY_worker_niceness") == "0", container["name"]
            assert env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1", container["name"]
            assert env.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1", container["name"]
            assert env.get("RAY_process_group_cleanup_enabled") == "1", container["name"]


def amd_gpu_cluster(values):
    """The gpu stack with its AMD group on, as the stack file's comments say: vendor resources, one Python (3.12, the
    ROCm images'), the ROCm base named by digest."""
    digest = "sha256:" + "e" * 64
    values["pythonVersion"] = "3.12"
    values["images"]["NVIDIA"].update(pythonVersion="3.12",
                                      buildArgs={"PYTHON_IMAGE": f"python:3.12.12-slim-bookworm@{digest}"})
    values["images"]["AMD_GPU"]["buildArgs"] = {"BASE_IMAGE": f"rocm/vllm:rocm6.4.1_vllm_0.10.1_20250909@{digest}"}
    for group in [values["headGroup"], *values["workerGroups"][:2]]:
        group["rayResources"] = {"nvidia_gpu": 1000}
    values["workerGroups"][2]["enabled"] = True
    values["serve"]["applications"][0]["args"]["resources"] = {"nvidia_gpu": 1}


def test_amd_gpu_pods_leave_gpu_masking_to_vllm(tmp_path):
    """A TP=4 replica on AMD GPUs: Ray must not mask the GPUs of the replica's workers (HARDWARE_ENV in
    infra/manifests.py says why); NVIDIA pods keep Ray's masking."""
    (tmp_path / "Pulumi.amd.yaml").write_text(yaml.safe_dump(with_values("gpu", amd_gpu_cluster)))
    (tmp_path / "Pulumi.kuberay.yaml").write_text((REPO_ROOT / "Pulumi.kuberay.yaml").read_text())
    paths = render("amd", tmp_path / "out", root=tmp_path)
    cluster = next(d for d in documents(paths) if d["kind"] == "RayService")["spec"]["rayClusterConfig"]
    envs = {group["groupName"]: {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
            for group in cluster["workerGroupSpecs"]}
    assert envs["gpu-amd"]["RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES"] == "1"
    assert envs["gpu-amd"]["RAY_EXPERIMENTAL_NOSET_ROCR_VISIBLE_DEVICES"] == "1"
    assert "ROCR_VISIBLE_DEVICES" not in envs["gpu-amd"]
    assert not any(name.startswith("RAY_EXPERIMENTAL_NOSET") for name in envs["gpu-nvidia"])

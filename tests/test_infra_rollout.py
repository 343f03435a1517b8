"""What `pulumi up` waits for on a RayService (infra/rollout.py): the new config settled, told from the statuses of the
one before by the config's marker application; the applications' own messages when it did not deploy. The statuses
are KubeRay 1.7's shape (checked against its CRD); the expression is checked as pulumi-kubernetes parses it and (e2e)
evaluated by an RFC 9535 implementation, the dialect pulumi-kubernetes' JSONPath library implements."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import jsonschema
import pulumi
import pytest
import yaml

from infra.config import REPO_ROOT, load_stack
from infra.program import main
from infra.rollout import CONFIG_MARKER_IMPORT, rollout_problems, wait_for, with_config_marker
from infra.serve_config import serve_config
from tests.infra_helpers import CRD_DIR, pulumi_config, stack_document

OLD, NEW = "config-0123456789ab", "config-ba9876543210"


def status(apps: dict, marker: str = NEW, ready: str = "True", reason: str = "NonZeroServeEndpoints",
           side: str = "activeServiceStatus", generation: int = 2) -> dict:
    """A RayService status as KubeRay 1.7 writes it: `apps` name -> (status, message), plus the marker's."""
    statuses = {name: {"status": state, "message": message,
                       "serveDeploymentStatuses": {"LLMServer": {"status": "UNHEALTHY" if message else "HEALTHY",
                                                                 "message": message}}}
                for name, (state, message) in apps.items()}
    statuses[marker] = {"status": "RUNNING", "serveDeploymentStatuses": {"ConfigMarker": {"status": "HEALTHY"}}}
    condition = {"type": "Ready", "status": ready, "reason": reason, "message": "", "observedGeneration": generation,
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}
    return {"observedGeneration": generation, "numServeEndpoints": 2, "conditions": [condition],
            side: {"rayClusterName": "llm-serving-abcde", "applicationStatuses": statuses}}


CASES = {
    # (status, settled?)
    "new config serving": (status({"llama2": ("RUNNING", "")}), True),
    # KubeRay's write in the reconcile that submits: the old statuses under the new observedGeneration.
    "old config's statuses": (status({"llama2": ("RUNNING", "")}, marker=OLD), False),
    "new config deploying": (status({"llama2": ("DEPLOYING", "")}), False),
    "new config running, no endpoint yet": (status({"llama2": ("RUNNING", "")}, ready="False", reason="Initializing"),
                                            False),
    "an app of the old config still going": (status({"llama2": ("RUNNING", ""), "old": ("DELETING", "")}), False),
    "new config failed": (status({"llama2": ("DEPLOY_FAILED", "ValueError: engine 'vllm' cannot load")}), True),
    "new cluster's config failed": (status({"llama2": ("DEPLOY_FAILED", "OOM")}, side="pendingServiceStatus",
                                           ready="False", reason="Initializing"), True),
    "old config failed": (status({"llama2": ("DEPLOY_FAILED", "old")}, marker=OLD), False),
    "initializing timeout": (status({"llama2": ("DEPLOYING", "")}, ready="False", reason="InitializingTimeout"), True),
}


def test_the_status_fixtures_are_kuberays_shape():
    crd = yaml.load((CRD_DIR / "ray.io_rayservices.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader",
                                                                                        yaml.SafeLoader))
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = copy.deepcopy(v1["schema"]["openAPIV3Schema"]["properties"]["status"])

    def strict(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            for value in node.values():
                strict(value)

    strict(schema)
    for case, (value, _) in CASES.items():
        jsonschema.validate(value, schema), case


def test_the_marker_names_the_config_and_changes_with_it():
    config = serve_config(load_stack("gpu"))
    marked, marker = with_config_marker(config)
    assert marked["applications"][:-1] == config["applications"]
    assert marked["applications"][-1] == {"name": marker, "route_prefix": None, "import_path": CONFIG_MARKER_IMPORT}
    changed = copy.deepcopy(config)
    changed["applications"][0]["args"]["max_ongoing_requests"] = 128
    assert with_config_marker(changed)[1] != marker and with_config_marker(copy.deepcopy(config))[1] == marker


def test_the_marked_config_is_valid_for_ray_serve():
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(with_config_marker(serve_config(load_stack("cpu")))[0])


def test_the_expression_parses_as_pulumi_kubernetes_reads_it():
    # provider/pkg/jsonpath Parse: one "jsonpath=" expression (not a JSON list), the path inside the first { },
    # split at a lone "=" (== is protected): none may remain, or it would become a value.
    value = wait_for(NEW, 2)
    assert value.startswith("jsonpath={$[?") and value.endswith("]}") and not value.startswith("[")
    path = re.fullmatch(r"jsonpath=\{\s*(.*?)\s*\}", value).group(1)
    assert "}" not in path and "=" not in path.replace("==", "")
    assert f"['{NEW}']" in path and "count(@.activeServiceStatus.applicationStatuses.*) == 2" in path


@pytest.mark.e2e
def test_the_expression_settles_exactly_when_this_config_did(tmp_path):
    target = tmp_path / "jsonpath"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target",
                    str(target), "jsonpath-rfc9535==1.0.1"], check=True, capture_output=True, timeout=600)
    sys.path.insert(0, str(target))
    try:
        import jsonpath_rfc9535
    finally:
        sys.path.remove(str(target))
    path = re.fullmatch(r"jsonpath=\{(.*)\}", wait_for(NEW, 2)).group(1)
    for case, (value, settled) in CASES.items():
        document = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"generation": 2},
                    "spec": {}, "status": value}
        # pulumi-kubernetes: matched when the first selected node exists (no value given).
        assert bool(jsonpath_rfc9535.find(path, document)) is settled, case


def test_a_failed_config_reports_the_applications_own_messages():
    problems = rollout_problems(CASES["new config failed"][0], NEW, "llm-serving", "60m")
    assert problems == ["RayService llm-serving: the new Serve config did not deploy:",
                        "active application llama2: DEPLOY_FAILED: ValueError: engine 'vllm' cannot load\n"
                        "    deployment LLMServer: UNHEALTHY: ValueError: engine 'vllm' cannot load"]
    assert "pending application llama2: DEPLOY_FAILED: OOM" in "\n".join(
        rollout_problems(CASES["new cluster's config failed"][0], NEW, "llm-serving", "60m"))
    assert rollout_problems(CASES["new config serving"][0], NEW, "llm-serving", "60m") == []
    assert rollout_problems(None, NEW, "llm-serving", "60m") == []  # not known (preview, render)


def test_an_initializing_timeout_names_the_recovery():
    (first, *apps) = rollout_problems(CASES["initializing timeout"][0], NEW, "llm-serving", "60m")
    assert first.startswith("RayService llm-serving did not become ready within rayService.initializingTimeout (60m)")
    assert "KubeRay 1.7 gives up on it for good" in first and "`pulumi up` again: it replaces the RayService" in first
    assert apps == ["active application llama2: DEPLOYING"]


@pulumi.runtime.test
def test_up_fails_with_the_messages_of_the_status_the_await_ended_on(mocks):
    marker = with_config_marker(serve_config(load_stack("cpu")))[1]
    failed = status({"llama2-cpu-intel": ("RUNNING", ""), "llama2-amd": ("DEPLOY_FAILED", "no ONNX model")},
                    marker=marker)
    mocks.computed["llm-serving-cpu"] = {"status": failed}
    pulumi.runtime.set_all_config(pulumi_config(stack_document("cpu")), [])
    with pytest.raises(pulumi.RunError, match="active application llama2-amd: DEPLOY_FAILED: no ONNX model"):
        pulumi.runtime.test(main)()


@pytest.mark.e2e
def test_the_marker_application_runs_on_a_node_without_cpus():
    """On Ray Serve itself: it deploys without a route and needs no CPU (a head with rayCpus 0 takes it)."""
    code = ("import ray; from ray import serve; from serving_app.config_marker import app; "
            "ray.init(num_cpus=0, include_dashboard=False); "
            "serve.run(app, name='config-0123456789ab', route_prefix=None); "
            "print(serve.status().applications['config-0123456789ab'].status.value)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "RUNNING"

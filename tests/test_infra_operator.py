"""One KubeRay operator per cluster: its own stack (Pulumi.kuberay.yaml) installs it, the serving stacks read and
check it at preview, so a second serving stack in the cluster installs nothing twice and destroying one never removes
what another uses."""

from __future__ import annotations

import re
import shutil

import pulumi
import pytest
import yaml

from infra.config import KUBERAY_CHART_VERSION, REPO_ROOT, StackConfigError, load_stack, to_pulumi_config
from infra.mocks import STACK_REFERENCE, RecordingMocks
from infra.program import main
from infra.render import render
from tests.infra_helpers import STACKS, config_error, pulumi_config, stack_document, with_values

OPERATOR_STACK = "organization/llm-serving/kuberay"


def operator_reads_as(mocks: RecordingMocks, outputs: dict) -> None:
    mocks.existing[(STACK_REFERENCE, OPERATOR_STACK)] = {"name": "kuberay", "outputs": outputs,
                                                         "secretOutputNames": []}


def run_serving_stack(stack: str = "cpu"):
    pulumi.runtime.set_all_config(pulumi_config(stack_document(stack)), [])
    deployment = main()
    return deployment.ray_service.ray_service.urn


@pulumi.runtime.test
def test_the_operator_stack_installs_chart_and_crds_and_exports_what_serving_stacks_check(mocks):
    pulumi.runtime.set_all_config(to_pulumi_config(stack_document("kuberay")), [])
    operator = main()

    def check(_):
        assert sorted(r.type for r in mocks.resources if r.type.startswith("kubernetes:")) == [
            "kubernetes:core/v1:Namespace", "kubernetes:helm.sh/v4:Chart"]
        outputs = pulumi.runtime.settings.get_root_resource().outputs
        assert outputs == {"kuberay": {"chart": "kuberay-operator", "version": KUBERAY_CHART_VERSION,
                                       "namespace": "kuberay-system"}}

    return operator.chart.urn.apply(check)


@pulumi.runtime.test
def test_the_operator_stack_refuses_client_side_apply(mocks):
    pulumi.runtime.set_all_config({**to_pulumi_config(stack_document("kuberay")),
                                   "kubernetes:enableServerSideApply": "false"}, [])
    with pytest.raises(pulumi.RunError, match="the KubeRay CRDs are larger than a client-side apply can write"):
        main()


def test_every_stack_file_renders_one_operator_in_all(tmp_path):
    charts = []
    for stack in (*STACKS, "kuberay"):
        for path in render(stack, tmp_path / stack):
            document = yaml.safe_load(path.read_text())
            if document["kind"] == "HelmRelease":
                charts.append((stack, document["spec"]["chart"]["spec"]["version"]))
    assert charts == [("kuberay", KUBERAY_CHART_VERSION)]


@pulumi.runtime.test
def test_a_serving_stack_waits_for_a_checked_operator(mocks):
    def check(_):
        assert (STACK_REFERENCE, OPERATOR_STACK) in {(r.type, r.inputs["id"]) for r in mocks.reads}

    return run_serving_stack().apply(check)


@pytest.mark.parametrize("outputs, message", [
    ({}, "kuberay.stack: stack 'kuberay' has not installed the KubeRay operator (no 'kuberay' output): "
         "pulumi up --stack kuberay first"),
    ({"kuberay": {"chart": "kuberay-operator", "version": "1.6.0", "namespace": "kuberay-system"}},
     "kuberay.stack: stack 'kuberay' runs KubeRay 1.6.0, this program writes RayServices for 1.7.0: "
     "pulumi up --stack kuberay from this checkout first"),
    ({"kuberay": {"chart": "kuberay-operator", "version": "1.7.0", "namespace": "ray-system"}},
     "kuberay.namespace: kuberay-system, but stack 'kuberay' runs the operator in ray-system"),
])
def test_a_serving_stack_refuses_a_missing_or_other_operator(mocks, outputs, message):
    operator_reads_as(mocks, outputs)
    with pytest.raises(pulumi.RunError, match=re.escape(message)):
        pulumi.runtime.test(run_serving_stack)()
    assert not [r for r in mocks.resources if r.inputs.get("kind") == "RayService"]


def test_serving_stacks_no_longer_install_it():
    message = config_error("gpu", lambda v: v["kuberay"].update(install=True))
    assert "llm-serving:kuberay: install/values: the operator is installed by its own stack now" in message
    assert load_stack("gpu").kuberay.stack == load_stack("cpu").kuberay.stack == "kuberay"


def test_the_operator_stack_is_not_a_serving_stack(tmp_path):
    shutil.copy(REPO_ROOT / "Pulumi.kuberay.yaml", tmp_path)
    with pytest.raises(StackConfigError, match="this stack installs the KubeRay operator only"):
        load_stack("kuberay", tmp_path)
    with pytest.raises(StackConfigError, match="installs the KubeRay operator only"):
        load_stack("x", root=_stack_file(tmp_path, with_values("gpu", lambda v: v.update(operator={}))))


def _stack_file(folder, document):
    (folder / "Pulumi.x.yaml").write_text(yaml.safe_dump(document))
    return folder

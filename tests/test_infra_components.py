"""Each Pulumi component on its own under the recording mocks: images, the operator, secrets, model storage."""

from __future__ import annotations

import base64
import json

import pulumi
from pulumi.runtime import rpc

from infra.images import ServingImages, ServingImagesArgs
from infra.kuberay import KubeRayOperator, KubeRayOperatorArgs
from infra.mocks import IMAGE_TYPE
from infra.model_storage import ModelStorageArgs, ModelVolume
from infra.secrets import ServingSecrets, ServingSecretsArgs
from infra.stack_sections import ImageSpec, ModelStorage, Registry
from serving_app.enums import TargetDevice
from tests.infra_helpers import SECRET, plain


@pulumi.runtime.test
def test_serving_images_build_with_the_clusters_versions(mocks):
    registry = Registry(server="r.example.com", repository="r.example.com/team", username="ci")
    images = ServingImages("images", ServingImagesArgs(
        images={TargetDevice.NVIDIA: ImageSpec(dockerfile="images/nvidia/Dockerfile"),
                TargetDevice.INTEL: ImageSpec.model_validate({"dockerfile": "images/cpu/Dockerfile",
                                                              "buildArgs": {"ENGINE": "bigdl", "EXTRA": "x y"}}),
                TargetDevice.AMD: ImageSpec(reference="x.example.com/amd@sha256:" + "c" * 64,
                                            ray_version="2.60.0", python_version="3.11")},
        ray_version="2.60.0", python_version="3.11", tag="t1", registry=registry,
        registry_password=pulumi.Output.secret("pw")))

    def check(refs):
        nvidia, intel, amd = refs
        built = {r.name: r.inputs for r in mocks.of_type(IMAGE_TYPE)}
        assert set(built) == {"llm-serving-nvidia", "llm-serving-intel"}  # the prebuilt AMD one is not built
        image = built["llm-serving-nvidia"]
        assert image["imageName"] == "r.example.com/team/llm-serving-nvidia:t1"
        assert image["build"]["args"] == {"RAY_VERSION": "2.60.0", "PYTHON_VERSION": "3.11"}
        # The build's own copy of the Dockerfile, beside the ignore file naming only what it copies; no absolute path.
        assert (image["build"]["context"], image["build"]["dockerfile"]) == (
            ".", ".cache/build-contexts/llm-serving-nvidia/Dockerfile")
        assert image["build"]["platform"] == "linux/amd64"
        cpu = built["llm-serving-intel"]["build"]
        assert cpu["args"] == {"ENGINE": "bigdl", "EXTRA": "x y", "RAY_VERSION": "2.60.0", "PYTHON_VERSION": "3.11"}
        assert cpu["dockerfile"] == ".cache/build-contexts/llm-serving-intel/Dockerfile"
        assert nvidia.startswith("r.example.com/team/llm-serving-nvidia@sha256:")
        assert intel.startswith("r.example.com/team/llm-serving-intel@sha256:")
        assert amd == "x.example.com/amd@sha256:" + "c" * 64

    refs = images.refs
    return pulumi.Output.all(refs[TargetDevice.NVIDIA], refs[TargetDevice.INTEL], refs[TargetDevice.AMD]).apply(check)


@pulumi.runtime.test
def test_kuberay_operator_chart_is_pinned_with_its_crds_and_protected(mocks):
    operator = KubeRayOperator("kuberay", KubeRayOperatorArgs(namespace="ops", values={"batchScheduler": {}}))

    def check(_):
        chart = mocks.one("kubernetes:helm.sh/v4:Chart").inputs
        assert (chart["chart"], chart["version"], chart["namespace"]) == ("kuberay-operator", "1.7.0", "ops")
        assert chart["repositoryOpts"] == {"repo": "https://ray-project.github.io/kuberay-helm/"}
        assert chart["values"] == {"batchScheduler": {}}
        # Pulumi applies the chart's CRDs (server-side) and upgrades them with the chart; Helm would not.
        assert chart["skipCrds"] is False
        assert mocks.one("kubernetes:core/v1:Namespace").inputs["metadata"]["name"] == "ops"

    assert operator.chart._protect and operator.namespace._protect  # destroy would delete every RayService's CRD
    return operator.chart.urn.apply(check)


@pulumi.runtime.test
def test_serving_secrets_are_secret_and_optional(mocks):
    registry = Registry(server="r.example.com", repository="r.example.com/team", username="ci")
    secrets = ServingSecrets("s", ServingSecretsArgs(namespace="ns", name_prefix="svc", labels={},
                                                     hf_token=pulumi.Output.secret("tok"), registry=registry,
                                                     registry_password=pulumi.Output.secret("pw")))
    none = ServingSecrets("none", ServingSecretsArgs(namespace="ns", name_prefix="other", labels={}))
    assert (none.hf_secret_name, none.pull_secret_name) == (None, None)
    assert (secrets.hf_secret_name, secrets.pull_secret_name) == ("svc-hf-token", "svc-registry")

    def check(_):
        by_name = {r.inputs["metadata"]["name"]: r.inputs for r in mocks.of_type(SECRET)}
        assert set(by_name) == {"svc-hf-token", "svc-registry"}
        assert plain(by_name["svc-hf-token"]["stringData"]) == {"HF_TOKEN": "tok"}
        assert all(rpc.is_rpc_secret(s["stringData"]) for s in by_name.values())
        config = json.loads(plain(by_name["svc-registry"]["stringData"])[".dockerconfigjson"])
        assert config["auths"]["r.example.com"]["auth"] == base64.b64encode(b"ci:pw").decode()

    return pulumi.Output.all(*[s.urn for s in secrets.secrets]).apply(check)


@pulumi.runtime.test
def test_model_volume_binds_a_retained_nfs_volume(mocks):
    storage = ModelStorage.model_validate({"nfs": {"server": "10.0.0.5", "path": "/srv/models", "size": "1Ti"}})
    volume = ModelVolume("models", ModelStorageArgs(storage=storage, namespace="ns", namespace_name="ns",
                                                    name_prefix="svc", labels={}))
    existing = ModelVolume("other", ModelStorageArgs(storage=ModelStorage(existing_claim="mine"), namespace="ns",
                                                     namespace_name="ns", name_prefix="x", labels={}))
    assert (volume.claim_name, existing.claim_name) == ("svc-models", "mine")

    def check(_):
        pv = mocks.one("kubernetes:core/v1:PersistentVolume").inputs
        pvc = mocks.one("kubernetes:core/v1:PersistentVolumeClaim").inputs
        assert pv["spec"]["nfs"] == {"server": "10.0.0.5", "path": "/srv/models", "readOnly": True}
        assert pv["spec"]["accessModes"] == ["ReadOnlyMany"] and pv["spec"]["storageClassName"] == ""
        assert pvc["spec"]["volumeName"] == pv["metadata"]["name"] == "ns-svc-models"
        assert pvc["spec"]["resources"]["requests"] == {"storage": "1Ti"}

    assert (existing.volume, existing.claim) == (None, None)
    return pulumi.Output.all(volume.volume.urn, volume.claim.urn).apply(check)

"""A statically bound NFS claim (infra/model_storage.py) cannot take a new size, access mode or NFS source: preview
refuses such a change against the stack's last deployment, with the steps, before the volume or claim is touched."""

from __future__ import annotations

import pulumi
import pytest

from infra.mocks import STACK_REFERENCE, RecordingMocks, mocked
from infra.model_storage import storage_facts, storage_problems
from infra.previous import OUTPUT
from infra.program import main
from infra.stack_sections import ModelStorage
from tests.infra_helpers import pulumi_config, stack_document

URN = "urn:pulumi:gpu::llm-serving::llm-serving:index:ModelVolume$kubernetes:core/v1:PersistentVolume::models-pv"


def nfs(**changes) -> ModelStorage:
    values = {"server": "nfs.example.com", "path": "/export/models", "size": "2Ti", "accessMode": "ReadWriteMany",
              **changes}
    return ModelStorage.model_validate({"nfs": values, "readOnly": False})


BEFORE = storage_facts(nfs())


def test_unchanged_or_first_storage_is_fine():
    assert storage_problems(BEFORE, nfs(), URN) == []
    assert storage_problems(None, nfs(size="3Ti"), URN) == []  # first deployment
    assert storage_facts(ModelStorage(existing_claim="models")) is None  # someone else's claim: not ours to check


def test_a_bound_claim_cannot_grow():
    (problem,) = storage_problems(BEFORE, nfs(size="3Ti"), URN)
    assert problem.startswith("modelStorage.nfs: size 2Ti -> 3Ti: a claim bound to its own volume cannot be resized "
                              "(Kubernetes resizes dynamically provisioned claims only)")
    assert "Keep size: 2Ti; or recreate volume and claim" in problem
    assert f"`pulumi destroy --target '{URN}' --target-dependents`" in problem
    assert "the weights stay on the NFS server), then `pulumi up`" in problem


def test_a_new_access_mode_would_never_bind():
    (problem,) = storage_problems(BEFORE, nfs(accessMode="ReadWriteOnce"), URN)
    assert "accessMode ReadWriteMany -> ReadWriteOnce: a claim's access modes cannot change, and a new claim never " \
           "binds the retained volume" in problem


def test_a_new_nfs_source_is_refused_once():
    (problem,) = storage_problems(BEFORE, nfs(server="nfs2.example.com", path="/models"), URN)
    assert "server nfs.example.com -> nfs2.example.com, path /export/models -> /models" in problem
    assert problem.count("a volume's NFS source cannot change") == 1


@pytest.fixture
def mocks():
    with mocked(RecordingMocks(), stack="gpu") as recorder:
        yield recorder


def test_preview_refuses_before_the_volume_is_declared(mocks):
    mocks.existing[(STACK_REFERENCE, "organization/llm-serving/gpu")] = {"outputs": {OUTPUT: {
        "rayService": {}, "modelStorage": {**storage_facts(nfs()), "size": "1Ti"}}}}
    pulumi.runtime.set_all_config(pulumi_config(stack_document("gpu")), [])
    with pytest.raises(pulumi.RunError, match=r"modelStorage.nfs: size 1Ti -> 2Ti") as error:
        pulumi.runtime.test(main)()
    assert f"--target '{URN}'" in str(error.value)  # the volume's URN, as `pulumi stack --show-urns` prints it
    assert not [r for r in mocks.resources if r.type.startswith("kubernetes:core/v1:Persistent")]

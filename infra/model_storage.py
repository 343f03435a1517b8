"""Model weights on NFS: a PersistentVolume and a claim bound to it, mounted at /models; or an existing claim.

The claim is bound statically (storageClassName "", volumeName), which fixes what may change later: Kubernetes
resizes only dynamically provisioned claims, a claim's access modes cannot change (Pulumi would replace the claim,
and the new one never binds the volume, still bound to the old one and retained), and a volume's NFS source cannot
change. Preview refuses those changes against the stack's last deployment (infra/previous.py), with the steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pulumi
import pulumi_kubernetes as k8s

from .stack_sections import ModelStorage

# A statically bound NFS claim's settings that a running volume and claim cannot take, by stack-file key.
FIXED = {"size": "a claim bound to its own volume cannot be resized (Kubernetes resizes dynamically provisioned "
                 "claims only); NFS does not enforce it anyway, the export's free space does",
         "accessMode": "a claim's access modes cannot change, and a new claim never binds the retained volume "
                       "(it stays bound to the old one)",
         "server": "a volume's NFS source cannot change", "path": "a volume's NFS source cannot change",
         "readOnly": "a volume's NFS source cannot change"}


def storage_facts(storage: ModelStorage) -> Optional[dict[str, Any]]:
    """What the next run compares with (infra/previous.py, under "modelStorage"); None for an existing claim."""
    nfs = storage.nfs
    if nfs is None:
        return None
    return {"size": nfs.size, "accessMode": nfs.access_mode, "server": nfs.server, "path": nfs.path,
            "readOnly": storage.read_only}


def storage_problems(previous: Optional[dict[str, Any]], storage: ModelStorage, volume_urn: str) -> list[str]:
    now = storage_facts(storage)
    if not previous or now is None:
        return []
    changed = [key for key in FIXED if key in previous and previous[key] != now[key]]
    if not changed:
        return []
    reasons = "; ".join(dict.fromkeys(FIXED[key] for key in changed))
    what = ", ".join(f"{key} {previous[key]} -> {now[key]}" for key in changed)
    keep = ", ".join(f"{key}: {previous[key]}" for key in changed)
    return [f"modelStorage.nfs: {what}: {reasons}. Keep {keep}; or recreate volume and claim: `pulumi destroy "
            f"--target '{volume_urn}' --target-dependents` (the volume, its claim and the RayService that mounts it; "
            "the weights stay on the NFS server), then `pulumi up`"]


COMPONENT = "llm-serving:index:ModelVolume"


@dataclass
class ModelStorageArgs:
    storage: ModelStorage
    namespace: pulumi.Input[str]
    namespace_name: str
    name_prefix: str
    labels: dict[str, str]
    # The stack's last deployment (infra/previous.py); {} on the first run.
    previous: pulumi.Input[dict[str, Any]] = field(default_factory=dict)


class ModelVolume(pulumi.ComponentResource):
    claim_name: str
    volume: Optional[k8s.core.v1.PersistentVolume] = None
    claim: Optional[k8s.core.v1.PersistentVolumeClaim] = None
    facts: Optional[dict[str, Any]]

    def __init__(self, name: str, args: ModelStorageArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(COMPONENT, name, None, opts)
        storage = args.storage
        self.facts = storage_facts(storage)
        if storage.existing_claim is not None:
            self.claim_name = storage.existing_claim
        else:
            nfs = storage.nfs
            self.claim_name = f"{args.name_prefix}-models"
            # PersistentVolumes are cluster-wide: the namespace in the name keeps two stacks apart.
            pv_name = f"{args.namespace_name}-{args.name_prefix}-models"
            # The URN `--target` takes (the component sits at the stack's top: its type prefixes the volume's).
            volume_urn = (f"urn:pulumi:{pulumi.get_stack()}::{pulumi.get_project()}::{COMPONENT}"
                          f"$kubernetes:core/v1:PersistentVolume::{name}-pv")
            # The volume (and so the claim) is not declared until the change is known to be one they can take.
            checked = pulumi.Output.from_input(args.previous).apply(lambda p: self._check(storage, p, volume_urn))
            self.volume = volume = k8s.core.v1.PersistentVolume(
                f"{name}-pv",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=pv_name, labels=args.labels),
                spec=checked.apply(lambda _: k8s.core.v1.PersistentVolumeSpecArgs(
                    capacity={"storage": nfs.size},
                    access_modes=[nfs.access_mode],
                    # Never delete the weights with the stack.
                    persistent_volume_reclaim_policy="Retain",
                    storage_class_name="",
                    mount_options=nfs.mount_options or None,
                    nfs=k8s.core.v1.NFSVolumeSourceArgs(server=nfs.server, path=nfs.path,
                                                        read_only=storage.read_only),
                )),
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.claim = k8s.core.v1.PersistentVolumeClaim(
                f"{name}-pvc",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=self.claim_name, namespace=args.namespace,
                                                    labels=args.labels),
                spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
                    access_modes=[nfs.access_mode],
                    # Static binding to the volume above, not to a dynamic provisioner.
                    storage_class_name="",
                    volume_name=volume.metadata.name,
                    resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": nfs.size}),
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({"claimName": self.claim_name})

    @staticmethod
    def _check(storage: ModelStorage, previous: dict[str, Any], volume_urn: str) -> None:
        problems = storage_problems((previous or {}).get("modelStorage"), storage, volume_urn)
        if problems:
            raise pulumi.RunError("\n".join(problems))

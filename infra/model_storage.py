"""Model weights on NFS: a PersistentVolume and a claim bound to it, mounted at /models; or an existing claim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from .stack_sections import ModelStorage


@dataclass
class ModelStorageArgs:
    storage: ModelStorage
    namespace: pulumi.Input[str]
    namespace_name: str
    name_prefix: str
    labels: dict[str, str]


class ModelVolume(pulumi.ComponentResource):
    claim_name: str
    volume: Optional[k8s.core.v1.PersistentVolume] = None
    claim: Optional[k8s.core.v1.PersistentVolumeClaim] = None

    def __init__(self, name: str, args: ModelStorageArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-serving:index:ModelVolume", name, None, opts)
        storage = args.storage
        if storage.existing_claim is not None:
            self.claim_name = storage.existing_claim
        else:
            nfs = storage.nfs
            self.claim_name = f"{args.name_prefix}-models"
            # PersistentVolumes are cluster-wide: the namespace in the name keeps two stacks apart.
            pv_name = f"{args.namespace_name}-{args.name_prefix}-models"
            self.volume = volume = k8s.core.v1.PersistentVolume(
                f"{name}-pv",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=pv_name, labels=args.labels),
                spec=k8s.core.v1.PersistentVolumeSpecArgs(
                    capacity={"storage": nfs.size},
                    access_modes=[nfs.access_mode],
                    # Never delete the weights with the stack.
                    persistent_volume_reclaim_policy="Retain",
                    storage_class_name="",
                    mount_options=nfs.mount_options or None,
                    nfs=k8s.core.v1.NFSVolumeSourceArgs(server=nfs.server, path=nfs.path,
                                                        read_only=storage.read_only),
                ),
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

"""Serving images: one per hardware target, built from a Dockerfile in images/ (with the stack's buildArgs) and
pushed, or prebuilt. With every needed image prebuilt, nothing here touches the docker provider, so preview and up
need no Docker daemon."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_docker as docker

from serving_app.enums import TargetDevice

from . import build_context
from .config import REPO_ROOT
from .stack_sections import ImageSpec, Registry


def image_slug(hardware: TargetDevice) -> str:
    return "llm-serving-" + hardware.value.lower().replace("_", "-")


@dataclass
class ServingImagesArgs:
    images: dict[TargetDevice, ImageSpec]  # only the hardware the cluster deploys
    ray_version: str
    python_version: str
    tag: str
    registry: Optional[Registry] = None
    registry_password: Optional[pulumi.Input[str]] = None


class ServingImages(pulumi.ComponentResource):
    """`refs[hardware]` is the image reference pods use: repository@sha256 of the pushed build, or the given one."""

    refs: dict[TargetDevice, pulumi.Output[str]]

    def __init__(self, name: str, args: ServingImagesArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-serving:index:ServingImages", name, None, opts)
        self.refs = {}
        for hardware, spec in args.images.items():
            if spec.reference is not None:
                self.refs[hardware] = pulumi.Output.from_input(spec.reference)
                continue
            if args.registry is None or args.registry_password is None:
                raise ValueError(f"images.{hardware.value}: building needs registry config and the "
                                 f"registryPassword secret (pulumi config set --secret registryPassword ...)")
            slug = image_slug(hardware)
            # The Dockerfile asserts the Ray/Python args at build time: a mismatched base fails the build, not the
            # pod. The same args checks.py resolved the Dockerfile with at preview.
            build_args = spec.docker_build_args(args.ray_version, args.python_version)
            image = docker.Image(
                slug,
                image_name=f"{args.registry.repository}/{slug}:{args.tag}",
                build=docker.DockerBuildArgs(
                    # Relative to the project root (Pulumi's working directory), so no checkout path is an input.
                    context=".",
                    dockerfile=build_context.prepare(slug, spec.dockerfile, build_args, REPO_ROOT),
                    platform=spec.platform,
                    args=build_args,
                ),
                registry=docker.RegistryArgs(
                    server=args.registry.server,
                    username=args.registry.username,
                    password=pulumi.Output.secret(args.registry_password),
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            # The digest, not the tag: a rebuilt image changes the pod spec, and pods run exactly what was pushed.
            self.refs[hardware] = image.repo_digest
        self.register_outputs({h.value: ref for h, ref in self.refs.items()})

"""Pulumi mocks that record every resource the program declares, with its inputs: render writes the records as
manifests, the tests inspect them. Outputs echo inputs (plus what a provider would compute)."""

from __future__ import annotations

import asyncio
import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pulumi
from pulumi.runtime.stack import register_stack_transformation

from .config import (
    PROJECT, REPO_ROOT, is_operator_stack, parse_operator_stack_config, read_stack_file, to_pulumi_config,
)
from .kuberay import OUTPUT as OPERATOR_OUTPUT, operator_facts

IMAGE_TYPE = "docker:index/image:Image"
STACK_REFERENCE = "pulumi:pulumi:StackReference"
# The organization of a self-managed (DIY) backend's stacks; Pulumi Cloud names yours.
ORGANIZATION = "organization"


def stack_outputs(qualified_name: str, root: Path) -> dict[str, Any]:
    """A stack's outputs as a reference to it reads them, where they follow from its stack file alone: an operator
    stack's (the serving stacks' depend on images and the cluster: empty, as before a first `up`)."""
    organization, project, name = qualified_name.split("/")
    path = root / f"Pulumi.{name}.yaml"
    if (organization, project) != (ORGANIZATION, PROJECT) or not path.is_file():
        return {}
    config = to_pulumi_config(read_stack_file(name, root))
    if not is_operator_stack(config):
        return {}
    return {OPERATOR_OUTPUT: operator_facts(parse_operator_stack_config(config).operator.namespace)}


@dataclass
class Recorded:
    type: str
    name: str
    inputs: dict[str, Any]


class RecordingMocks(pulumi.runtime.Mocks):
    """`image_digests`: a pushed image's repoDigest is a digest derived from its repository, as `pulumi up` pins
    it; without, it is the image's tag (render: the digest is known only after the push)."""

    def __init__(self, image_digests: bool = False, root: Path = REPO_ROOT) -> None:
        self.image_digests = image_digests
        self.root = root  # where the stack files are (a StackReference to an operator stack reads its file)
        self.resources: list[Recorded] = []
        # Reads of objects the program does not manage (`Resource.get`, StackReference): recorded apart from the
        # resources (render writes no manifest for them), answered from `existing` by (type, id), else empty.
        self.reads: list[Recorded] = []
        self.existing: dict[tuple[str, str], dict[str, Any]] = {}
        # Outputs a provider would add to a managed resource's inputs (e.g. a RayService's status), by name.
        self.computed: dict[str, dict[str, Any]] = {}
        # (type, name) -> position in the program. Registration order races (inputs resolve on worker threads);
        # declaration order is stable and is an apply order.
        self.declared: dict[tuple[str, str], int] = {}

    def declare(self, args: pulumi.ResourceTransformationArgs) -> None:
        self.declared.setdefault((args.type_, args.name), len(self.declared))

    def in_declaration_order(self) -> list[Recorded]:
        return sorted(self.resources, key=lambda r: self.declared[(r.type, r.name)])

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[Optional[str], dict]:
        if args.resource_id:
            self.reads.append(Recorded(args.typ, args.name, {"id": args.resource_id}))
            return args.resource_id, self._read(args.typ, args.resource_id)
        self.resources.append(Recorded(args.typ, args.name, args.inputs))
        outputs = {**args.inputs, **self.computed.get(args.name, {})}
        if args.typ == IMAGE_TYPE:
            outputs["repoDigest"] = self._repo_digest(args.inputs["imageName"])
        return f"{args.name}-id", outputs

    def _read(self, type_: str, resource_id: str) -> dict[str, Any]:
        if (type_, resource_id) in self.existing:
            return self.existing[(type_, resource_id)]
        if type_ == STACK_REFERENCE:
            return {"name": resource_id, "outputs": stack_outputs(resource_id, self.root), "secretOutputNames": []}
        return {}

    def _repo_digest(self, image_name: str) -> str:
        if not self.image_digests:
            return image_name
        repository = image_name.rsplit(":", 1)[0]
        return f"{repository}@sha256:{hashlib.sha256(repository.encode()).hexdigest()}"

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, Optional[list]]:
        return {}, None

    def of_type(self, type_: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str) -> Recorded:
        found = self.of_type(type_)
        if len(found) != 1:
            raise LookupError(f"expected one {type_}, got {[r.name for r in found]}")
        return found[0]


@contextmanager
def mocked(mocks: RecordingMocks, stack: str) -> Iterator[RecordingMocks]:
    """Fresh runtime state and event loop with `mocks` in place of the engine, for the block."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pulumi.runtime.reset_options()
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, organization=ORGANIZATION)
    try:
        yield mocks
    finally:
        loop.close()


def run_with_mocks(program: Callable[[], Any], mocks: RecordingMocks, stack: str, config: dict[str, str],
                   secret_keys: list[str]) -> None:
    """Run `program` once under `mocks`, recording the order it declares resources in."""

    def declaring() -> Any:
        register_stack_transformation(mocks.declare)  # runs in each resource's constructor: program order
        return program()

    with mocked(mocks, stack):
        pulumi.runtime.set_all_config(config, secret_keys)
        pulumi.runtime.test(declaring)()

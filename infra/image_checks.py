"""Preview-time checks of the serving images (infra.checks runs them): every deployed group has an image, and every
image carries the cluster's Ray and Python, is built from a base pinned by digest, and copies files that exist."""

from __future__ import annotations

from pathlib import Path

from serving_app.engines.registry import image_engine
from serving_app.enums import TargetDevice

from .config import REPO_ROOT, StackConfig
from .dockerfile import UnresolvedArg, arg_defaults, base_images, copied_requirement_files, dockerfile_args, ray_pins
from .stack_sections import ImageSpec


def image_python(spec: ImageSpec, dockerfile: str) -> str | None:
    """The Python a built image carries: the stack's word for a base its buildArgs pick, else the Dockerfile's."""
    return spec.python_version or arg_defaults(dockerfile).get("PYTHON_VERSION")


def _one_python(stack: StackConfig, key: str, where: str, python: str | None) -> list[str]:
    if python == stack.python_version:
        return []
    return [f"{key}: {where} carries Python {python}, the cluster runs pythonVersion {stack.python_version}; Ray "
            f"needs one Python on every node: set pythonVersion to it, or build this image on a base with "
            f"{stack.python_version} (buildArgs naming the base, and {key}.pythonVersion)"]


def check_built_image(stack: StackConfig, hardware: TargetDevice, spec: ImageSpec, root: Path) -> list[str]:
    key = f"images.{hardware.value}"
    path = root / spec.dockerfile
    if not path.is_file():
        return [f"{key}.dockerfile: {spec.dockerfile} does not exist"]
    text = path.read_text()
    problems = _one_python(stack, key, f"{spec.dockerfile}'s base", image_python(spec, text))
    ray = arg_defaults(text).get("RAY_VERSION")
    if ray != stack.ray_version:
        problems.append(f"{key}: {spec.dockerfile} has ARG RAY_VERSION={ray}, the cluster needs {stack.ray_version}")
    declared = dockerfile_args(text)
    for name in spec.build_args:
        if name not in declared:  # docker ignores it with a warning; most likely a typo
            problems.append(f"{key}.buildArgs.{name}: {spec.dockerfile} declares no ARG {name}")
    engine = spec.build_args.get("ENGINE", arg_defaults(text).get("ENGINE"))
    expected = image_engine(hardware).value
    if "ENGINE" in declared and engine is not None and engine != expected:
        # Apps are placed by hardware, so the hardware's image must carry the engine its apps run.
        problems.append(f"{key}.buildArgs.ENGINE: {engine}, but {hardware.value} images carry {expected}")
    build_args = spec.docker_build_args(stack.ray_version, stack.python_version)
    try:
        bases = base_images(text, build_args)
        requirements = copied_requirement_files(text, build_args)
    except UnresolvedArg as error:
        return problems + [f"{key}.buildArgs: {spec.dockerfile}: {error}"]
    for base in bases:
        if "@sha256:" not in base:
            problems.append(f"{key}: {spec.dockerfile} builds on {base}, not pinned by digest (<image>:<tag>@sha256:"
                            f"<digest>): a tag pushed again would change the image with nothing changed here")
    pins = []
    for requirement in requirements:
        req_path = root / requirement
        if not req_path.is_file():
            given = f" (buildArgs {spec.build_args})" if spec.build_args else ""
            problems.append(f"{key}: {spec.dockerfile} copies {requirement}{given}, which does not exist")
            continue
        pins += [(requirement, pin) for pin in ray_pins(req_path.read_text())]
    if not pins:
        problems.append(f"{key}: {spec.dockerfile} installs no pinned ray (ray[serve]==X in a requirements file)")
    for requirement, pin in pins:
        if pin != stack.ray_version:
            problems.append(f"{key}: {requirement} pins ray {pin}, the cluster's rayVersion is {stack.ray_version}")
    return problems


def check_images(stack: StackConfig, root: Path = REPO_ROOT) -> list[str]:
    problems = []
    builds = False
    for hardware in stack.needed_hardware():
        key = f"images.{hardware.value}"
        spec = stack.images.get(hardware)
        if spec is None:
            users = [name for name, group, _ in stack.node_groups() if group.hardware == hardware]
            problems.append(f"{key}: node group(s) {users} run on {hardware.value} but no image is configured")
        elif spec.reference is not None:
            if spec.ray_version != stack.ray_version:
                problems.append(f"{key}: image carries Ray {spec.ray_version}, the cluster runs rayVersion "
                                f"{stack.ray_version}")
            problems += _one_python(stack, key, "the image", spec.python_version)
        else:
            builds = True
            problems += check_built_image(stack, hardware, spec, root)
    if builds and stack.registry is None:
        problems.append("registry: images are built, so a registry (server, repository, username) is required")
    return problems

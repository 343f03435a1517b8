"""The Dockerfile facts the preview checks and the image builds need, evaluated as `docker build` would: ARG
defaults, declared ARGs, the base images, and what COPY takes from the context, with `$ARG`/`$ENV` references
expanded per stage."""

from __future__ import annotations

import re
import shlex
from typing import Any, Iterator, Mapping, Optional


def arg_defaults(dockerfile: str) -> dict[str, str]:
    """ARG NAME=default, wherever declared (the version pins the checks compare with the cluster's)."""
    return dict(re.findall(r"^\s*ARG\s+([A-Z_]+)=(\S+)", dockerfile, flags=re.MULTILINE))


class UnresolvedArg(ValueError):
    """A `$NAME` in a Dockerfile that the build would expand to an empty string, building something else."""

    def __init__(self, name: str, declared: bool, text: str):
        self.name, self.text = name, text
        why = "has no default: set it in buildArgs" if declared else "is not an ARG of the Dockerfile"
        super().__init__(f"`{text}`: ${name} {why}")


# $NAME, ${NAME}, ${NAME:-word}, ${NAME:+word}: the forms Dockerfile instructions expand.
_REFERENCE = re.compile(r"\$(?:\{([A-Za-z_]\w*)(?::([-+])([^}]*))?\}|([A-Za-z_]\w*))")


def _substitute(text: str, scope: Mapping[str, Optional[str]]) -> str:
    """Expand references; scope maps each declared name to its value, None where declared without one."""
    def expand(match: re.Match) -> str:
        name = match.group(1) or match.group(4)
        value = scope.get(name)
        if match.group(2) == "-":
            return value if value else _substitute(match.group(3), scope)
        if match.group(2) == "+":
            return _substitute(match.group(3), scope) if value else ""
        if value is None:
            raise UnresolvedArg(name, name in scope, text)
        return value

    return _REFERENCE.sub(expand, text)


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comment lines dropped."""
    result, pending = [], ""
    for line in dockerfile.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical, pending = (pending + line).strip(), ""
        if logical:
            instruction, _, rest = logical.partition(" ")
            result.append((instruction.upper(), rest.strip()))
    return result


def dockerfile_args(dockerfile: str) -> set[str]:
    """Every ARG name the Dockerfile declares (a build arg it does not declare is ignored by docker)."""
    return {token.split("=", 1)[0] for instruction, rest in _instructions(dockerfile) if instruction == "ARG"
            for token in shlex.split(rest)}


def _resolved(dockerfile: str, build_args: Optional[Mapping[str, str]]) -> Iterator[tuple[str, list[Any]]]:
    """("FROM", [base, or the UnresolvedArg it raised]) per stage and ("COPY", [source, ...]) per COPY from the build
    context, `$ARG`s resolved as `docker build` does: ARG defaults overridden by build_args, scoped per stage (an ARG
    before FROM only reaches a stage that redeclares it). Raises UnresolvedArg for a COPY reference that would expand
    to nothing."""
    build_args = build_args or {}
    global_scope: dict[str, Optional[str]] = {}
    scope: Optional[dict[str, Optional[str]]] = None  # None until the first FROM
    for instruction, rest in _instructions(dockerfile):
        if instruction == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            try:
                yield "FROM", [_substitute(words[0], global_scope)]
            except UnresolvedArg as error:  # only base_images needs the base
                yield "FROM", [error]
            scope = {}
        elif instruction == "ARG":
            target = global_scope if scope is None else scope
            for token in shlex.split(rest):
                name, has_default, default = token.partition("=")
                if name in build_args:
                    target[name] = build_args[name]
                elif has_default:
                    target[name] = _substitute(default, target)
                else:
                    target[name] = global_scope.get(name) if scope is not None else None
        elif instruction == "ENV" and scope is not None and rest:
            tokens = shlex.split(rest)  # ENV K=V [K=V ...], or the legacy ENV K V
            pairs = [t.partition("=")[::2] for t in tokens] if "=" in tokens[0] else [(tokens[0], " ".join(tokens[1:]))]
            for name, value in pairs:
                scope[name] = _substitute(value, scope)
        elif instruction == "COPY" and scope is not None:
            parts = rest.split()
            if any(p.startswith("--from") for p in parts):  # from another stage or image, not the context
                continue
            yield "COPY", [_substitute(p, scope) for p in [p for p in parts if not p.startswith("--")][:-1]]


def copied_sources(dockerfile: str, build_args: Optional[Mapping[str, str]] = None) -> list[str]:
    """Every path COPY takes from the build context: what the image's context must hold, and nothing more."""
    return [source for instruction, values in _resolved(dockerfile, build_args) if instruction == "COPY"
            for source in values]


def copied_requirement_files(dockerfile: str, build_args: Optional[Mapping[str, str]] = None) -> list[str]:
    """The requirements files COPY takes from the build context (see copied_sources)."""
    return [path for path in copied_sources(dockerfile, build_args) if path.endswith(".txt")]


def base_images(dockerfile: str, build_args: Optional[Mapping[str, str]] = None) -> list[str]:
    """The image each stage is built FROM, build args applied (a stage built from an earlier one by its name too)."""
    bases = [values[0] for instruction, values in _resolved(dockerfile, build_args) if instruction == "FROM"]
    for base in bases:
        if isinstance(base, UnresolvedArg):
            raise base
    return bases


def ray_pins(requirements: str) -> list[str]:
    """The versions a requirements file pins ray (or ray[extras]) to."""
    return re.findall(r"^\s*ray(?:\[[^\]]*\])?==([0-9.]+)", requirements, flags=re.MULTILINE)

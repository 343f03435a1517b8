"""infra.dockerfile: `$ARG`/`$ENV` references resolved as `docker build` expands COPY sources, per stage."""

from __future__ import annotations

import pytest

from infra.dockerfile import UnresolvedArg, copied_requirement_files, dockerfile_args

RESOLVE = """\
ARG BASE=python:3.11
ARG GLOBAL=from-global
FROM ${BASE}
ARG GLOBAL
ARG ENGINE=bigdl
ARG DIR=requirements
# a comment ${NOT_AN_ARG}
ENV SUFFIX=.txt
COPY --chown=ray:ray $DIR/${ENGINE}${SUFFIX} \\
     ${DIR}/${GLOBAL}.txt /tmp/
COPY ${DIR}/${OPTIONAL:-fallback}.txt ${DIR}/x${ENGINE:+-$ENGINE}.txt /tmp/
COPY --from=builder /${UNDECLARED}.txt /tmp/
"""


def test_args_resolve_from_defaults_then_build_args():
    assert copied_requirement_files(RESOLVE) == [
        "requirements/bigdl.txt", "requirements/from-global.txt", "requirements/fallback.txt",
        "requirements/x-bigdl.txt"]
    # A build arg reaches only a declared ARG: OPTIONAL has none, so its fallback stays.
    overridden = copied_requirement_files(RESOLVE, {"ENGINE": "onnxruntime", "GLOBAL": "g", "OPTIONAL": "o"})
    assert overridden == ["requirements/onnxruntime.txt", "requirements/g.txt", "requirements/fallback.txt",
                          "requirements/x-onnxruntime.txt"]
    assert dockerfile_args(RESOLVE) == {"BASE", "GLOBAL", "ENGINE", "DIR"}


def test_unresolvable_references_are_errors():
    # A global ARG reaches a stage only when redeclared there; an undeclared name expands to nothing.
    not_redeclared = RESOLVE.replace("ARG GLOBAL\n", "")
    with pytest.raises(UnresolvedArg) as error:
        copied_requirement_files(not_redeclared)
    assert (error.value.name, str(error.value)) == (
        "GLOBAL", "`${DIR}/${GLOBAL}.txt`: $GLOBAL is not an ARG of the Dockerfile")
    with pytest.raises(UnresolvedArg, match=r"\$GLOBAL has no default"):
        copied_requirement_files(RESOLVE.replace("ARG GLOBAL=from-global", "ARG GLOBAL"))
    assert copied_requirement_files(RESOLVE.replace("ARG GLOBAL=from-global", "ARG GLOBAL"), {"GLOBAL": "set"})[1] \
        == "requirements/set.txt"


def test_env_in_both_forms_reaches_later_instructions():
    # `ENV K=V ...` and Docker's older `ENV K V` (the rest of the line is the value).
    dockerfile = "FROM base\nENV DIR=requirements EXT=.txt\nENV NAME bigdl\nCOPY ${DIR}/${NAME}${EXT} /tmp/\n"
    assert copied_requirement_files(dockerfile) == ["requirements/bigdl.txt"]

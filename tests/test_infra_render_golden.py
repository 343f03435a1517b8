"""A refactor must not change what a cluster applies: both stacks render byte-identical to tests/fixtures/render/.
A deliberate manifest change regenerates them: `python -m infra render --stack <s> --out tests/fixtures/render/<s>`
(render replaces its earlier files there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.render import render
from tests.infra_helpers import STACKS

GOLDEN = Path(__file__).parent / "fixtures" / "render"


@pytest.mark.parametrize("stack", (*STACKS, "kuberay"))
def test_render_is_byte_identical_to_golden(stack, tmp_path):
    golden = GOLDEN / stack
    expected = sorted(p.name for p in golden.iterdir())
    assert expected, f"no golden files in {golden}"
    written = render(stack, tmp_path)
    assert sorted(p.name for p in written) == expected
    for name in expected:
        assert (tmp_path / name).read_bytes() == (golden / name).read_bytes(), f"{stack}/{name} differs"

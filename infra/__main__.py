"""`python -m infra render --stack <gpu|cpu> --out <dir>`: the stack's Kubernetes manifests, offline.
`python -m infra local ...`: an alias of `python -m devtools local ...` (local mode)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["local"]:  # an alias: local mode is developer tooling and lives in devtools/
        from devtools.__main__ import main as devtools_main

        return devtools_main(argv)
    parser = argparse.ArgumentParser(prog="python -m infra")
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="write the manifests a stack would apply (no cluster, no CLI)")
    render.add_argument("--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    render.add_argument("--out", required=True, type=Path, help="output folder (one YAML document per file)")
    commands.add_parser("local", help="serve a stack's applications on this machine (see: local --help)")
    args = parser.parse_args(argv)

    import pulumi

    from .render import render as render_stack

    try:
        paths = render_stack(args.stack, args.out)
    except (pulumi.RunError, ValueError) as error:
        print(f"render failed: {error}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

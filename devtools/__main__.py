"""`python -m devtools local up|status|down|smoke --stack <gpu|cpu>`: local mode (devtools/local_mode.py)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["local"]:
        print("usage: python -m devtools local {up,status,down,smoke} --stack STACK [options]\n"
              "       (python -m devtools.tiny_llama OUT_DIR generates a random test model)", file=sys.stderr)
        return 2
    from .local_mode import main as local_main

    return local_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

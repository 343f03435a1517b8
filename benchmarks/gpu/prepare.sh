#!/usr/bin/env bash
# Wheels for the GPU machine (no network there, at most 64 MiB per device call): vLLM 0.25.1 (the newest release
# built for its torch 2.11 / CUDA 13), Ray Serve and what they import beyond the machine's own packages.
# Run from the repository root; writes .gpu/wheels and .gpu/c_XX/part_XX (one <=57 MB tar chunk each, git-ignored).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rm -rf .gpu/wheels .gpu/c_* && mkdir -p .gpu/wheels
source "$(dirname "$0")/platform.sh"
python3 -m pip download -q --no-deps "${plat[@]}" -d .gpu/wheels -r "$here/requirements.txt"
tar -C .gpu -cf - wheels | split -b 57M - .gpu/part_
for p in .gpu/part_*; do d=.gpu/c_${p##*_}; mkdir -p "$d"; mv "$p" "$d/"; done
ls -d .gpu/c_* | tr '\n' ' '; echo; du -sh .gpu/wheels

#!/usr/bin/env bash
# Here, after prepare.sh: the wheels (and .gpu/fp8whl, where present) installed for the GPU machine's Python 3.12
# into one site folder, xz-compressed and cut into 5 chunks of <= 60 MB (.gpu/x/c00 .. c04): 298 MB for vLLM 0.25.1
# + Ray 2.60.0, against 382 MB of wheels in 7 chunks. There, one device call per chunk (carry .gpu/x/c0N):
#   mkdir -p /tmp/parts && cp .gpu/x/c*/part_* /tmp/parts/
# and in the call that carries the last one, before anything else: bash benchmarks/gpu/unpack.sh
set -euo pipefail
source "$(dirname "$0")/platform.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
wheels=(.gpu/wheels/*.whl)
[ -d .gpu/fp8whl ] && wheels+=(.gpu/fp8whl/*.whl)
python3 -m pip install -q --no-index --no-deps --no-compile "${plat[@]}" --target "$work/site" "${wheels[@]}"
tar -C "$work" -cf - site | xz -T0 -6 > "$work/site.tar.xz"
rm -rf .gpu/x && mkdir -p .gpu/x
split -n 5 -d "$work/site.tar.xz" .gpu/x/part_
for part in .gpu/x/part_*; do dir=.gpu/x/c${part##*_}; mkdir -p "$dir"; mv "$part" "$dir/"; done
du -sh .gpu/x/c*

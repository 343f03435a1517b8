#!/usr/bin/env bash
# On the GPU machine, after every chunk was copied to /tmp/parts (one device call per chunk:
#   mkdir -p /tmp/parts && cp .gpu/c_*/part_* /tmp/parts/   carrying that one .gpu/c_XX):
# unpack and install into /tmp/site; then `export PYTHONPATH=/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0`.
set -euo pipefail
rm -rf /tmp/wheels /tmp/site
cat /tmp/parts/part_* | tar -C /tmp -xf -
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/wheels/*.whl
PYTHONPATH=/tmp/site python3 -c "import vllm, ray, ray.serve, fastapi; print('vllm', vllm.__version__, 'ray', ray.__version__, 'fastapi', fastapi.__version__)"

#!/usr/bin/env bash
# There, once every chunk of pack.sh is in /tmp/parts: the site folder at /tmp/site (then PYTHONPATH=/tmp/site),
# and a copy of the tree sent with this call at /tmp/snap, to run from while later calls replace the work tree.
set -euo pipefail
rm -rf /tmp/site /tmp/snap
cat /tmp/parts/part_* | xz -dc -T0 | tar -C /tmp -xf -
rm -rf /tmp/parts
mkdir -p /tmp/snap
tar --exclude=./.gpu -cf - . | tar -C /tmp/snap -xf -
PYTHONPATH=/tmp/site python3 -c "import vllm, ray, ray.serve; print('vllm', vllm.__version__, 'ray', ray.__version__)"

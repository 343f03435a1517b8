#!/usr/bin/env bash
# Issue 3's ONNX Runtime benchmark on the lent GPU machine's CPUs (16 cores): the engine keeps its num_cpus threads
# while Ray, HAProxy and the load generator run on other cores, as on a real node (on the 2-vCPU dev VM they share
# the engine's two cores). Files: benchmarks/gpu/prepare.sh and prepare_cpu.sh here; there, one call per chunk
# (/tmp/parts: prepare.sh's, /tmp/xparts: prepare_cpu.sh's, /tmp/whl: .gpu/whl), then install.sh, then:
#   bash benchmarks/gpu/cpu_onnx.sh SIZE THREADS REPS [TAG_SUFFIX]     (SIZE: 100m or 100m-gqa)
# Results go to $OUT when set (the device tool's folder), else benchmarks/results. RESULTS.md "Issue 3 on 16 cores".
set -euo pipefail
size=$1 threads=$2 reps=$3 suffix=${4:-}
root=$(pwd)
models=/tmp/serving-bench/models
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
mkdir -p /tmp/x "$models"
if [ ! -d /tmp/x/models ]; then
  cat /tmp/xparts/part_* | tar -C /tmp/x -xf -
  # ONNX Runtime as on the dev VM (the machine's own is older); /tmp/site comes first on PYTHONPATH.
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /tmp/x/ort/*.whl \
    /tmp/whl/*.whl
fi
artifact=llama-$size-onnx-int8-avx512_vnni
[ -d "$models/$artifact" ] || cp -r "/tmp/x/models/$artifact" "$models/"
if [ ! -f "$models/llama-$size/model.safetensors" ]; then
  # Same shapes and seed (the load generator reads its tokenizer, the report its parameter counts); the tokenizer is
  # the one the artifact was converted with, so prompts are tokenized alike on both sides.
  python3 -m devtools.tiny_llama "$models/llama-$size" --size "$size"
  cp /tmp/x/models/base-tokenizer-$size/* "$models/llama-$size/"
fi
# This machine's bandwidth for the report's limit column, kept outside the work tree (each device call re-sends the
# dev VM's results/membw.json); none (n/a) rather than the dev VM's if it cannot be measured.
[ -f /tmp/x/membw.json ] || { python3 benchmarks/membw.py --reps 3 && cp benchmarks/results/membw.json /tmp/x/; } || true
if [ -f /tmp/x/membw.json ]; then cp /tmp/x/membw.json benchmarks/results/; else rm -f benchmarks/results/membw.json; fi
python3 benchmarks/cpu_engines.py --engine onnxruntime --python "$(command -v python3)" --model-size "$size" \
  --onnx-quantization avx512_vnni --extra-args "{\"num_cpus\": $threads}" --reps "$reps" --skip-reference-8 \
  --ray-env "{\"RAY_worker_niceness\": \"0\", \"PYTHONPATH\": \"$root:/tmp/site\"}" \
  --tag="-16cores-$size-${threads}threads$suffix"
if [ -n "${OUT:-}" ]; then cp benchmarks/results/cpu-onnxruntime-16cores-*.json benchmarks/results/membw.json "$OUT/"; fi

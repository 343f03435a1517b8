#!/usr/bin/env bash
# On the GPU machine, after install.sh: bash benchmarks/gpu/run.sh ours|bare|both --shape 70b|7b [options]
# Results (and the servers' logs) go to $OUT when set (the device tool's folder), else benchmarks/results.
export PYTHONPATH=/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
exec python3 -m benchmarks.gpu_serving "$@" --out "${OUT:-benchmarks/results}" --keep-logs

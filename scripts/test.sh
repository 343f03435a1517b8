#!/usr/bin/env bash
# The whole test suite: creates the environments (scripts/setup_envs.sh), then runs each part in the environment
# of the serving image it mirrors. Extra arguments go to every pytest run (e.g. -x, -k name).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_envs.sh
export PYTHONDONTWRITEBYTECODE=1
status=0
run() {  # label, python, pytest args...
  local label=$1 python=$2; shift 2
  echo "=== $label"
  "$python" -m pytest -p no:cacheprovider "$@" || status=1
}
run "main environment: vLLM engine, argument model, Pulumi program" .venv/bin/python tests --engine vllm "$@"
run "bigdl environment: BigDL-LLM engine (API suite, low-bit cache, batching loop)" .venv-bigdl/bin/python \
  tests/test_api.py tests/test_bigdl_engine.py tests/test_batching.py --engine bigdl "$@"
run "onnx environment: ONNX Runtime engine (API suite, conversion, batching loop)" .venv-onnx/bin/python \
  tests/test_api.py tests/test_onnx_engine.py tests/test_batching.py --engine onnxruntime "$@"
exit $status

#!/usr/bin/env bash
# Files for cpu_onnx.sh on the lent GPU machine (no network there, at most 64 MiB per device call), from the
# repository root after benchmarks/cpu_engines.py has converted both models here (--model-size 100m and 100m-gqa,
# --onnx-quantization avx512_vnni):
#   .gpu/x/c_XX/part_XX  <=57 MB tar chunks of: ort/ (ONNX Runtime's cp312 wheel, as here) and models/ (the converted
#                        artifacts, and the tokenizer files of the models they were converted from);
#   .gpu/whl/            optimum + optimum-onnx (the engine checks they are installed; it converts nothing there).
# Plus benchmarks/gpu/prepare.sh's chunks (Ray Serve; vLLM for the load generator). One device call per chunk:
#   mkdir -p /tmp/xparts && cp .gpu/x/c_*/part_* /tmp/xparts/      (carrying that one .gpu/x/c_XX)
set -euo pipefail
models=${BENCH_WORK:-/tmp/serving-bench}/models
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# The versions the onnx environment here has, so both machines run the same ones.
pins=$(.venv-onnx/bin/python -c "import importlib.metadata as m
print(*(f'{p}=={m.version(p)}' for p in ('onnxruntime', 'optimum', 'optimum-onnx')))")
read -r ort optimum <<<"$pins"
rm -rf .gpu/x .gpu/whl && mkdir -p .gpu/x/stage/ort .gpu/x/stage/models .gpu/whl
python3 -m pip download -q --no-deps "${plat[@]}" -d .gpu/x/stage/ort "$ort"
# shellcheck disable=SC2086  # optimum holds two requirements
python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl $optimum
for size in 100m 100m-gqa; do
  cp -r "$models/llama-$size-onnx-int8-avx512_vnni" .gpu/x/stage/models/
  mkdir -p ".gpu/x/stage/models/base-tokenizer-$size"
  cp "$models/llama-$size"/{config.json,generation_config.json,special_tokens_map.json,tokenizer.json,tokenizer_config.json} \
     ".gpu/x/stage/models/base-tokenizer-$size/"
done
tar -C .gpu/x/stage -cf - ort models | split -b 57M - .gpu/x/part_
for p in .gpu/x/part_*; do d=.gpu/x/c_${p##*_}; mkdir -p "$d"; mv "$p" "$d/"; done
rm -rf .gpu/x/stage
ls -d .gpu/x/c_* | tr '\n' ' '; echo

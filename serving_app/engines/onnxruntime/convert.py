"""Convert a Hugging Face model for the ONNX Runtime engine before serving it.

    python -m serving_app.convert [onnx] --model MODEL --out DIR [--no-quantize] [--quantization avx2] [--force]

`onnx`: exports MODEL (a local directory or hub id) with Optimum (text generation with a KV cache), quantizes it to
dynamic int8 with ONNX Runtime (unless --no-quantize: float32), rewrites attention so the KV cache is updated in
place (`attention_rewrite.py`), and saves config, generation config and tokenizer beside it: the directory the
`onnxruntime` engine serves. The output appears complete or not at all: it is built in
a staging directory and renamed into place; on failure the command prints why and exits non-zero.

--quantization picks the int8 kernels' target: avx2 (default: correct on every x86-64 CPU, EPYC generations
included), avx512, avx512_vnni (Zen 4, Sapphire Rapids: ~2x faster prefill), arm64, or auto: this machine's best
(avx512_vnni where the CPU has VNNI, else avx2; arm64 on ARM). Serve an auto or avx512_vnni conversion only on
CPUs with VNNI: its signed int8 weights can saturate in plain AVX2 kernels.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

from ... import artifacts
from ..options import QUANTIZATION_TARGETS
from .attention_rewrite import GRAPH_REWRITE, KV_CACHE_LAYOUT, AttentionRewriteError, rewrite_attention

ONNX_KIND = "onnx"


def resolve_quantization(target: str, cpuinfo: str = "/proc/cpuinfo") -> str:
    """`auto` -> the target for this machine's CPU; any other target as given."""
    if target != "auto":
        return target
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path(cpuinfo).read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        flags = []
    return "avx512_vnni" if {"avx512_vnni", "avx_vnni"} & set(flags) else "avx2"


class ConversionError(RuntimeError):
    """The conversion did not produce a model; nothing was written to the output directory."""


def onnx_data_type(quantize: bool) -> str:
    return "int8" if quantize else "float32"


def convert_command(model: str, out: str, quantize: bool = True) -> str:
    """The command line that converts `model` into `out` (quoted in the engine's error messages)."""
    return f"python -m serving_app.convert onnx --model {model} --out {out}" + ("" if quantize else " --no-quantize")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("optimum", "optimum-onnx", "onnxruntime", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def _activation_matmuls(path: Path) -> list[str]:
    """MatMuls without a constant weight: attention's Q.K^T and P.V, rotary's inv_freq x positions. Optimum's dynamic
    quantization would quantize them too (ORT's quantize_dynamic would not: MatMulConstBOnly): every decode step would
    re-quantize the whole KV cache to uint8 with one scale (cost grows with rows x tokens) and round positions and
    attention weights. They stay float32."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    names: list[str] = []

    def visit(graph: Any, constants: set[str]) -> None:
        constants = constants | {init.name for init in graph.initializer}
        constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
        for node in graph.node:
            if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] not in constants:
                names.append(node.name)
            for attribute in node.attribute:  # If/Loop bodies (merged decoders)
                for body in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                    visit(body, constants)

    visit(graph, set())
    return names


def _rewrite_attention(path: Path, model: str) -> None:
    import json

    import onnx

    try:
        config = json.loads((path.parent / "config.json").read_text())
        graph = onnx.load(str(path), load_external_data=False)  # weights beside the graph stay where they are
        rewrite_attention(graph, int(config["num_attention_heads"]), config.get("max_position_embeddings"))
        onnx.save(graph, str(path))
    except (AttentionRewriteError, KeyError, ValueError, OSError) as error:
        raise ConversionError(f"rewriting {model}'s attention for an in-place KV cache failed: {error}") from error


def convert_onnx(model: str, out: Path, *, quantize: bool, quantization: str, overwrite: bool = False,
                 trust_remote_code: bool = False) -> Path:
    """Export + quantize `model` into `out` atomically; returns `out`. Raises ConversionError."""
    out = Path(out)
    if quantization not in QUANTIZATION_TARGETS:
        raise ConversionError(f"unknown quantization target {quantization!r} (choose from "
                              f"{', '.join(QUANTIZATION_TARGETS)})")
    quantization = resolve_quantization(quantization)
    local = Path(model)
    if not local.exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise ConversionError(f"model {model!r} does not exist (give a model directory or a hub id)")
    if local.exists() and not (local / "config.json").is_file():
        raise ConversionError(f"{model} is not a Hugging Face model directory (no config.json)")
    if out.exists() and not overwrite:
        raise ConversionError(f"{out} already exists: pass --force to replace it")
    try:
        from optimum.exporters.onnx import main_export
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig
    except ImportError as error:
        raise ConversionError(f"the ONNX conversion needs optimum[onnxruntime] and optimum-onnx "
                              f"(requirements/onnxruntime.txt): {error}") from error

    staging = artifacts.staging_dir(out)
    try:
        try:
            main_export(model, output=staging, task="text-generation-with-past", device="cpu",
                        do_validation=False, trust_remote_code=trust_remote_code)
        except Exception as error:
            raise ConversionError(f"exporting {model} to ONNX failed: {error}") from error
        file_name = "model.onnx"
        if not (staging / file_name).is_file():
            raise ConversionError(f"the ONNX export of {model} wrote no {file_name}")
        if quantize:
            external = (staging / "model.onnx_data").exists()  # models over 2 GB keep weights beside the graph
            work = staging / ".quantized"
            try:
                quantizer = ORTQuantizer.from_pretrained(staging, file_name=file_name)
                config = getattr(AutoQuantizationConfig, quantization)(
                    is_static=False, nodes_to_exclude=_activation_matmuls(staging / file_name))
                # No suffix: the int8 graph keeps the name model.onnx (and its external data a matching name).
                quantizer.quantize(quantization_config=config, save_dir=work, file_suffix=None,
                                   use_external_data_format=external)
            except Exception as error:
                raise ConversionError(f"int8 quantization of {model} failed: {error}") from error
            if not (work / file_name).is_file():
                raise ConversionError(f"int8 quantization of {model} wrote no {file_name}")
            for exported in staging.glob("model.onnx*"):  # the float32 graph
                exported.unlink()
            for produced in work.iterdir():  # the int8 graph (and its data), ort_config.json
                if produced.name.startswith("model") or produced.name == "ort_config.json":
                    produced.rename(staging / produced.name)
            shutil.rmtree(work)
        _rewrite_attention(staging / file_name, model)
        if not (staging / "tokenizer_config.json").is_file():
            raise ConversionError(f"{model} has no tokenizer to save beside the ONNX model")
        record = {
            "kind": ONNX_KIND,
            "file_name": file_name,
            "data_type": onnx_data_type(quantize),
            "quantization": quantization if quantize else None,
            "kv_cache": KV_CACHE_LAYOUT,
            "graph": GRAPH_REWRITE,
            "versions": _versions(),
            **artifacts.source_fingerprint(model),
        }
        artifacts.seal(staging, record)
        if overwrite and out.exists():
            artifacts.discard(out)
        return artifacts.publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving_app.convert", description=__doc__.splitlines()[0])
    # Optional: `python -m serving_app.convert --model ...` and `... convert onnx --model ...` both work.
    parser.add_argument("target", nargs="?", choices=["onnx"], default="onnx",
                        help="onnx: Optimum ONNX export + ONNX Runtime dynamic int8 (AMD CPU engine)")
    parser.add_argument("--model", required=True, help="Hugging Face model directory or hub id")
    parser.add_argument("--out", required=True, type=Path, help="directory to create")
    parser.add_argument("--no-quantize", action="store_true", help="keep float32 weights (data_type float32)")
    parser.add_argument("--quantization", choices=QUANTIZATION_TARGETS, default="avx2",
                        help="int8 kernel target (default avx2: any x86-64 CPU; auto: this machine's best)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
    options = parser.parse_args(argv)
    try:
        out = convert_onnx(options.model, options.out, quantize=not options.no_quantize,
                           quantization=options.quantization, overwrite=options.force,
                           trust_remote_code=options.trust_remote_code)
    except (ConversionError, artifacts.ArtifactError, OSError) as error:
        print(f"error: {error}\nnothing was written to {options.out}", file=sys.stderr)
        return 1
    print(out)
    return 0

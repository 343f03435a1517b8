"""Intel Xeon engine: BigDL-LLM low-bit (int8, int4) models, batched by `batching.scheduler.BatchScheduler` over
the left-padded cache of `left_padded.LeftPaddedBatch`.

The first start quantizes the model (`load_in_low_bit`) and caches the result beside it, keyed by model and
precision (`serving_app.artifacts`: staged, sealed, renamed into place, so replicas starting together cannot
corrupt it); later starts reload it with `load_low_bit`. A partial or corrupt cache is discarded and rebuilt.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

from ... import artifacts
from ...serve_args import DataType, ServeArgs
from ..batching.engine import BatchingEngine, LoadedModel, eos_token_ids, pad_token_id, resolve_max_model_len
from ..options import BigDLOptions
from .compat import apply_rope_theta, check_config, load_tokenizer
from .left_padded import HFCausalLM, LeftPaddedBatch

logger = logging.getLogger("ray.serve")

# Fail at engine creation (create_engine names the right image), not minutes later in `start`.
if importlib.util.find_spec("bigdl") is None:
    raise ImportError("BigDL-LLM (bigdl-llm) is not installed")

LOW_BIT = {DataType.INT8: "sym_int8", DataType.INT4: "sym_int4"}
CACHE_KIND = "bigdl-low-bit"
CACHE_LAYOUT = 1  # bump when what is saved changes


def cache_expectation(model_name: str, precision: str) -> dict[str, Any]:
    """What a cache must have been built from to be reused (the marker's fields)."""
    from importlib.metadata import version

    return {
        "kind": CACHE_KIND,
        "layout": CACHE_LAYOUT,
        "precision": precision,
        "bigdl_llm": version("bigdl-llm"),
        **artifacts.source_fingerprint(model_name),
    }


def load_low_bit_model(model_name: str, precision: str, cache_dir: Optional[str] = None,
                       trust_remote_code: bool = False) -> tuple[Any, str, Path]:
    """(model, what happened to the cache, the cache's path). Cache states: "loaded" (reused), "built" (none
    existed), "rebuilt" (a partial, stale or corrupt one was replaced), "uncached" (it could not be written; the
    model serves anyway)."""
    from bigdl.llm.transformers import AutoModelForCausalLM

    final = artifacts.cache_location(model_name, "bigdl", precision, cache_dir)
    expect = cache_expectation(model_name, precision)
    record, why = artifacts.inspect(final, expect)
    status = "built" if why == "absent" else "rebuilt"
    if record is not None:
        try:
            model = AutoModelForCausalLM.load_low_bit(str(final), trust_remote_code=trust_remote_code)
            logger.info("loaded %s %s from the low-bit cache %s", model_name, precision, final)
            return model, "loaded", final
        except Exception as error:  # sizes matched but the content does not load: corrupt
            logger.warning("low-bit cache %s does not load (%r): rebuilding it", final, error)
            artifacts.discard(final, record.get("build_id"))
    elif why != "absent":
        logger.warning("low-bit cache %s is not usable (%s): rebuilding it", final, why)

    logger.info("quantizing %s to %s (first start for this model and precision)", model_name, precision)
    model = AutoModelForCausalLM.from_pretrained(
        model_name, load_in_low_bit=precision, optimize_model=True, trust_remote_code=trust_remote_code
    )
    try:
        staging = artifacts.staging_dir(final)
        try:
            model.save_low_bit(str(staging))
            artifacts.seal(staging, expect)
            artifacts.publish(staging, final, expect)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except (OSError, artifacts.ArtifactError) as error:  # a read-only or full volume: slower restarts, not an outage
        logger.warning("could not write the low-bit cache %s (%s): serving without it (set "
                       "engine_kwargs.low_bit_cache_dir to a writable directory)", final, error)
        return model, "uncached", final
    logger.info("low-bit cache written to %s", final)
    return model, status, final


class BigDLEngine(BatchingEngine):
    label = "bigdl"

    def __init__(self, args: ServeArgs):
        super().__init__(args)
        self.options: BigDLOptions = args.options  # type: ignore[assignment]
        self.precision = LOW_BIT[args.data_type]
        self.cache_status = ""
        self.cache_path: Optional[Path] = None

    def load(self) -> LoadedModel:
        from transformers import AutoConfig

        trust = self.options.trust_remote_code
        # Before quantizing: a model transformers 4.31 would compute wrongly is refused in seconds.
        check_config(AutoConfig.from_pretrained(self.args.model_name, trust_remote_code=trust))
        model, self.cache_status, self.cache_path = load_low_bit_model(
            self.args.model_name, self.precision, self.options.low_bit_cache_dir, trust
        )
        apply_rope_theta(model)
        model.eval()
        tokenizer = load_tokenizer(self.args.model_name, trust)
        eos = eos_token_ids(model.config, getattr(model, "generation_config", None), tokenizer)
        return LoadedModel(
            model=LeftPaddedBatch(HFCausalLM(model), pad_token_id(tokenizer, eos)),
            tokenizer=tokenizer,
            max_model_len=resolve_max_model_len(self.args, model.config),
            eos_token_ids=eos,
            description=f"BigDL-LLM {self.precision} (low-bit cache {self.cache_status}: {self.cache_path})",
        )

    def stats(self):
        stats = super().stats()
        stats.extra["low_bit_cache"] = self.cache_status
        return stats

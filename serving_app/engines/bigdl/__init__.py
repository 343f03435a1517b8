"""The BigDL-LLM engine (Intel Xeon): `engine.py` loads and caches the low-bit model, `left_padded.py` keeps the
running batch's KV cache. Importing `engine` needs BigDL-LLM; this package and `left_padded` do not."""

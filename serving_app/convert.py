"""The operator's conversion command, `python -m serving_app.convert onnx --model MODEL --out DIR`; the conversion
is `serving_app.engines.onnxruntime.convert` (its `--help` says the options)."""

import sys

from .engines.onnxruntime.convert import main

if __name__ == "__main__":
    sys.exit(main())

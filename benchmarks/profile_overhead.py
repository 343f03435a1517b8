"""Where the serving time goes in our app: py-spy samples the Ray Serve proxy and the replica while
`vllm bench serve` drives a streaming load, and the samples are attributed by code owner.

    .venv/bin/python benchmarks/profile_overhead.py [--concurrency 32] [--variant ours-nice0] [--seconds 20]

py-spy (pip install --target /tmp/serving-bench/pyspy py-spy; or --py-spy PATH) records each process at 100 Hz
(active threads only, i.e. roughly CPU time). Each sample's innermost frame is assigned to an owner by its file
(serving_app = ours, ray, vllm, starlette/fastapi/uvicorn, asyncio/uvloop, grpc, ...); the inclusive share of
samples with any serving_app frame is reported too. Writes benchmarks/results/profile-<variant>-c<N>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import LOGS, MAIN_PYTHON, WORK, _role, ensure_model, run_load, save  # noqa: E402
from benchmarks.overhead import VARIANTS  # noqa: E402
from benchmarks.pyspy import finish, record  # noqa: E402
from devtools.servers import OurServe  # noqa: E402
from infra.serve_config import application  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="ours-nice0", choices=[v for v in VARIANTS if v != "bare"])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--py-spy", default=str(WORK / "pyspy" / "bin" / "py-spy"))
    parser.add_argument("--python", type=Path, default=MAIN_PYTHON, help="the engine environment's python")
    parser.add_argument("--args", default="{}", help="JSON merged into the serve args (e.g. another engine)")
    parser.add_argument("--tag", default="")
    options = parser.parse_args()

    model = ensure_model("100m")
    serve_args = {
        "model_name": str(model), "served_model_name": "llama-100m", "target_device": "CPU", "max_model_len": 2048,
        "batch_size": 32, "engine_kwargs": {"kv_cache_memory_bytes": 512 * 2**20}, "max_ongoing_requests": 256,
        "num_cpus": 1, **json.loads(options.args),
    }
    if serve_args.get("engine", "vllm") != "vllm":
        serve_args.pop("engine_kwargs", None)  # vLLM's KV cache size means nothing to another engine
    server = OurServe(application("bench", "/bench", serve_args), options.python, label=options.variant,
                      env=VARIANTS[options.variant])
    result = {"variant": options.variant, "concurrency": options.concurrency, "command": " ".join(sys.argv),
              "serve_args": serve_args}
    try:
        server.start()
        targets = {_role(pid): pid for pid in server.pids()
                   if _role(pid) in ("ray proxy", "serve replica (API + vLLM frontend)")}

        load = threading.Thread(target=lambda: result.update(load=run_load(
            server, "llama-100m", model, 128, 128, options.concurrency, options.prompts, warmups=0)))
        load.start()
        recorders = {}
        for role, pid in targets.items():
            raw = LOGS / f"pyspy-{options.variant}-{role.split()[1]}.txt"
            recorders[role] = (raw, record(options.py_spy, pid, raw, options.seconds))
        for role, (raw, recorder) in recorders.items():
            result[role] = finish(recorder, raw, options.seconds + 30)
        load.join()
    finally:
        server.stop()
    save(f"profile-{options.variant}-c{options.concurrency}{options.tag}.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "load"}, indent=1))


if __name__ == "__main__":
    main()

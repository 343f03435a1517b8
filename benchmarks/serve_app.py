"""Run our Serve application on this machine the way KubeRay does, under the python that runs this module (so any
engine environment works), until stdin closes:

    ENV/bin/python -m benchmarks.serve_app --args '{"model_name": ..., "target_device": "CPU", ...}' \
        --info-file /tmp/info.json [--route-prefix /bench] [--num-cpus 8]

Starts a private Ray head (devtools/local_ray.py LocalRay: every port explicit, its own temp dir; stopping it kills only
its own processes), PUTs a Serve config with one application `serving_app:typed_app_builder` to the dashboard's
REST API, waits for RUNNING, then writes {base_url, temp_dir, ...} to --info-file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--args", required=True, help="the application's args (ServeArgs), as JSON")
    parser.add_argument("--info-file", type=Path, required=True)
    parser.add_argument("--route-prefix", default="/bench")
    parser.add_argument("--name", default="bench")
    parser.add_argument("--num-cpus", type=int, default=8, help="Ray's logical CPUs (scheduling only)")
    parser.add_argument("--deploy-timeout", type=float, default=900)
    options = parser.parse_args()

    from devtools.local_ray import LocalRay, application

    ray = LocalRay(num_cpus=options.num_cpus)
    try:
        ray.start()
        config = ray.serve_config([application(options.name, options.route_prefix, json.loads(options.args))])
        started = time.time()
        ray.deploy(config, timeout=options.deploy_timeout)
        info = {"base_url": ray.url(options.route_prefix), "temp_dir": str(ray.temp_dir),
                "dashboard": ray.dashboard, "deploy_s": round(time.time() - started, 1), "python": sys.executable}
        tmp = options.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.rename(options.info_file)
        print(json.dumps(info), flush=True)
        sys.stdin.read()  # until the driver closes our stdin (or dies)
    finally:
        ray.stop()


if __name__ == "__main__":
    main()

"""Issue 6: our application on a GPU machine (Ray Serve + vLLM, tensor parallel) against bare `vllm serve`, on the
same machine in the same session. Runs ON the GPU machine (benchmarks/gpu/prepare.sh and install.sh bring vLLM and Ray
there):

    python3 -m benchmarks.gpu_serving ours --shape 70b --out DIR     # the gpu stack's app, as rendered, on Ray
    python3 -m benchmarks.gpu_serving bare --shape 70b --out DIR     # `vllm serve` with the same engine settings
    python3 -m benchmarks.gpu_serving both --shape 7b --out DIR      # 1 GPU each: ours on GPU 0, bare on GPU 1
    python3 -m benchmarks.gpu_serving table DIR/*.json               # markdown for benchmarks/RESULTS.md

`ours` takes the `gpu` stack's Serve config as `pulumi up` renders it (infra.serve_config: same import path, same
args), changing only what a weightless benchmark must: the model path (a Llama-2 shape, `load_format: dummy`) and,
for the 7B shape, one GPU. It records where Ray put the replica and vLLM's workers (placement groups, actors, GPU
processes) and what Serve says of replicas that do not fit. Load: vLLM's own generator, the anchors' workload
(random 32-token prompts, 256 output tokens, ignore EOS, streaming /v1/completions) at each --concurrency.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Union

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import LOGS, _role, loadavg, machine_info, median, package_versions, run_load  # noqa: E402
from benchmarks.pyspy import finish, record  # noqa: E402
from devtools.serve_rest import http_json  # noqa: E402
from devtools.servers import BareVLLM, OurServe, Server, running  # noqa: E402
from infra.config import load_stack  # noqa: E402
from infra.serve_config import MULTI_MODEL_IMPORT_PATH, application, serve_config  # noqa: E402
from serving_app.engines.vllm_engine import engine_arguments  # noqa: E402
from serving_app.model_shapes import local_config  # noqa: E402
from serving_app.multi_model import MultiModelArgs  # noqa: E402
from serving_app.serve_args import ServeArgs, parse_serve_args  # noqa: E402

SHAPES = Path(__file__).resolve().parent / "gpu_models"
VOCAB = 32000
METRICS = [("output_throughput", "output tok/s"), ("p50_ttft_ms", "TTFT p50"), ("p95_ttft_ms", "TTFT p95"),
           ("p50_itl_ms", "ITL p50"), ("p95_itl_ms", "ITL p95")]


# ---- the model: a Llama-2 shape without weights -----------------------------------------------------------


def model_dir(shape: str, root: Path) -> Path:
    """config.json of the shape + a 32000-word WordLevel tokenizer (the load generator and our API need one)."""
    out = root / f"llama2-{shape}"
    if (out / "tokenizer.json").exists():
        return out
    from tokenizers import Tokenizer, models, pre_tokenizers

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text((SHAPES / f"llama2-{shape}.json").read_text())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 4096}))
    return out


def app_config(shape: str, model: Path, replicas: Optional[int], backend: Optional[str],
               settings: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The gpu stack's first application, as rendered for the RayService, re-pointed at the weightless shape."""
    stack = load_stack("gpu")
    base = stack.serve.applications[0].args
    overrides: dict[str, Any] = {"engine_kwargs": {**base.engine_kwargs, "load_format": "dummy"}}
    if backend:
        overrides["engine_kwargs"]["distributed_executor_backend"] = backend
    if shape == "7b":
        overrides.update(gpu_count=1, num_replicas=1, served_model_name="meta-llama/Llama-2-7b-chat-hf")
    if replicas is not None:
        overrides["num_replicas"] = replicas
    overrides.update(settings or {})
    entry = serve_config(stack)["applications"][0]
    # served_model_name keeps the hub id clients already use; the result is re-validated as the stack's args are.
    changed = {**entry["args"], **overrides, "model_name": str(model)}
    if "num_replicas" in overrides:  # a fixed count for a benchmark, in place of the stack's autoscaling range
        changed.pop("autoscaling_config", None)
    args = parse_serve_args(changed, "gpu_serving overrides").model_dump(mode="json", exclude_none=True,
                                                                           exclude_defaults=True)
    return {**entry, "args": args}


HOSTED = "hosted"


def behind_router(app: dict[str, Any], router: Union[str, int] = HOSTED) -> dict[str, Any]:
    """The same model as the only one behind the router of several models: `hosted`, the router's replicas run it
    (as the default model by default); a count, the router is a deployment of that many replicas of its own (one hop
    more: router -> the model's replica)."""
    args: dict[str, Any] = {"models": [app["args"]]}
    if router != HOSTED:
        args["router"] = {"hosts_default_model": False, **({"num_replicas": int(router)} if int(router) != 1 else {})}
    MultiModelArgs.model_validate(args)
    return application(app["name"], app["route_prefix"], args, app.get("runtime_env"),
                       import_path=MULTI_MODEL_IMPORT_PATH)


def frontend_args(app: dict[str, Any]) -> dict[str, Any]:
    """The model's own args, in the plain app or behind the router."""
    return app["args"]["models"][0] if app["import_path"] == MULTI_MODEL_IMPORT_PATH else app["args"]


def model_deployment(app: dict[str, Any]) -> str:
    """The name of the Serve deployment that holds the model's engine."""
    if app["import_path"] == MULTI_MODEL_IMPORT_PATH:
        return MultiModelArgs.model_validate(app["args"]).deployment_names()[0] or "Router"
    return "LLMServer"


# ---- our app on Ray ----------------------------------------------------------------------------------------


def ours_on_ray(app: dict[str, Any], gpus: Optional[str] = None, label: str = "ours") -> OurServe:
    """The app on a Ray head on this machine; with `gpus`, Ray sees (and the replica gets) only those. A replica
    that does not fit stays pending, as on a cluster: it serves once one replica runs."""
    env = {"CUDA_VISIBLE_DEVICES": gpus} if gpus is not None else None
    return OurServe(app, sys.executable, label=label, env=env, num_cpus=os.cpu_count() or 16, any_replica=True)


def gpu_processes() -> list[dict[str, Any]]:
    """Processes holding GPU memory, with the GPU index (nvidia-smi)."""
    def query(what: str, fields: str) -> list[list[str]]:
        out = _nvidia_smi(f"--query-{what}={fields}", "--format=csv,noheader,nounits")
        return [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.strip()]

    index_of = {uuid: int(index) for index, uuid in query("gpu", "index,uuid")}
    return [{"pid": int(pid), "gpu": index_of.get(uuid), "used_mib": int(used)}
            for pid, uuid, used in query("compute-apps", "pid,gpu_uuid,used_memory")]


def _dashboard(ours: OurServe, path: str) -> Any:
    """The `data` of one of the dashboard's REST answers: a driver's `ray.init()` here would look for the head on
    the machine's address, where a loopback head does not listen."""
    status, body = http_json("GET", f"{ours.ray.dashboard}{path}", timeout=60)
    if status != 200:
        raise RuntimeError(f"Ray's dashboard: {path}: HTTP {status}: {body}")
    return body["data"]


def _state(ours: OurServe, resource: str) -> list[dict[str, Any]]:
    """One of Ray's state lists (the state API's REST form)."""
    query = "detail=1&limit=10000" + ("&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
                                      if resource == "actors" else "")
    return _dashboard(ours, f"/api/v0/{resource}?{query}")["result"]["result"]


def placement_report(ours: OurServe) -> dict[str, Any]:
    """Where Ray put the replica and vLLM's workers, and what Serve says about replicas that do not fit."""
    groups = [{"id": g["placement_group_id"], "state": g["state"], "name": g["name"],
               "bundles": [b.get("unit_resources", b) for b in (g.get("bundles") or [])]}
              for g in _state(ours, "placement_groups")]
    actors = [{"class": a["class_name"], "name": a.get("name"), "pid": a.get("pid"),
               "placement_group": a.get("placement_group_id"), "state": a["state"],
               "resources": a.get("required_resources")} for a in _state(ours, "actors")]
    usage = _dashboard(ours, "/api/cluster_status")["clusterStatus"]["loadMetricsReport"]["usage"]  # [used, total]
    resources = {"total": {k: total for k, (_, total) in usage.items()},
                 "available": {k: total - used for k, (used, total) in usage.items()}}
    gpus = gpu_processes()
    workers = [a for a in actors if "Worker" in a["class"] and "Serve" not in a["class"]]
    replicas = [a for a in actors if a["class"].startswith("ServeReplica")]
    running_groups = [g for g in groups if g["state"] == "CREATED" and any("GPU" in b for b in g["bundles"])]
    pending_groups = [g for g in groups if g["state"] == "PENDING"]
    gpu_of = {p["pid"]: p["gpu"] for p in gpus}
    serve_app = ours.ray.serve.applications().get(ours.app["name"], {})
    deployment = serve_app.get("deployments", {}).get(model_deployment(ours.app), {})
    return {
        "serve_deployment": {**{k: deployment.get(k) for k in ("status", "status_trigger", "message",
                                                                "required_resources")},
                             "replica_states": dict(Counter(r["state"] for r in deployment.get("replicas", [])))},
        "serve_application_status": serve_app.get("status"),
        "placement_groups": groups, "actors": actors, "gpu_processes": gpus, "ray_resources": resources,
        "checks": {
            "replica_actors": len(replicas),
            "replica_groups_created": len(running_groups),
            "replica_groups_pending": len(pending_groups),
            "vllm_workers": [{"pid": w["pid"], "gpu": gpu_of.get(w["pid"]),
                              "in_replica_group": w["placement_group"] in {g["id"] for g in running_groups}}
                             for w in workers],
            "gpu_indices_in_use": sorted({p["gpu"] for p in gpus}),
            "processes_per_gpu": {str(i): sum(1 for p in gpus if p["gpu"] == i) for i in {p["gpu"] for p in gpus}},
            "gpus_available_in_ray": resources["available"].get("GPU", 0.0),
        },
    }


# ---- runs ----------------------------------------------------------------------------------------------------


def bare_server(app: dict[str, Any], model: Path, gpus: Optional[str] = None) -> BareVLLM:
    """`vllm serve` with the engine settings our app's args resolve to (what ServeArgs hands AsyncEngineArgs)."""
    args = ServeArgs.model_validate(frontend_args(app))
    extra = []
    for key, value in engine_arguments(args, local_config(str(model))).items():
        # BareVLLM sets these itself; bare vLLM picks its own executor (mp on one node).
        if key not in ("model", "served_model_name", "max_model_len", "max_num_seqs", "disable_log_stats",
                       "distributed_executor_backend"):
            extra += [f"--{key.replace('_', '-')}", str(value)]
    return BareVLLM(model, args.served_model_name, args.max_model_len, args.batch_size, None, LOGS, python=Path(sys.executable),
                    extra=extra, env={"CUDA_VISIBLE_DEVICES": gpus} if gpus is not None else None)


def prompts(options: argparse.Namespace, concurrency: int) -> int:
    """Prompts per load: --waves of them per stream, at least --min-prompts."""
    return max(options.min_prompts, options.waves * concurrency)


def bench(servers: list[Server], app: dict[str, Any], model: Path, options: argparse.Namespace,
          meta: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    served = ServeArgs.model_validate(frontend_args(app)).served_model_name
    runs: list[dict[str, Any]] = []
    for rep in range(options.reps):
        for concurrency in options.concurrency:
            for server in servers if rep % 2 == 0 else servers[::-1]:
                result = run_load(server, served, model, options.input_len, options.output_len, concurrency,
                                  prompts(options, concurrency), seed=rep,
                                  warmups=min(concurrency, options.max_warmups))
                result["rep"] = rep
                runs.append(result)
                print(f"[gpu] {options.shape} {server.label} c={concurrency}: {result['output_throughput']:.0f} tok/s "
                      f"TTFT p50 {result['p50_ttft_ms']:.1f} ms ITL p50 {result['p50_itl_ms']:.2f} ms "
                      f"ok={result['tokens_ok']}", flush=True)
                save(out, meta, runs)
    return runs


# The processes that turn the engine's outputs into HTTP: where a per-token cost of ours would show.
FRONTENDS = ("serve replica (API + vLLM frontend)", "serve router (several models' ingress)",
             "vllm api server (API + frontend)")


def profile(servers: list[Server], app: dict[str, Any], model: Path, options: argparse.Namespace,
            out_dir: Path) -> dict[str, Any]:
    """One more load at --profile concurrency, outside the measured runs (py-spy costs a little), with each
    frontend process sampled for --profile-seconds; the raw stacks are kept beside the results."""
    served = ServeArgs.model_validate(frontend_args(app)).served_model_name
    concurrency = options.profile
    profiles: dict[str, Any] = {}
    for server in servers:
        recorders = []
        for pid, role in ((pid, _role(pid)) for pid in server.pids()):
            if role not in FRONTENDS:
                continue
            raw = out_dir / f"pyspy-{options.shape}-{server.label}-c{concurrency}-{role.split()[1]}-{pid}.txt"
            recorders.append((pid, role, raw, record(options.py_spy, pid, raw, options.profile_seconds)))
        load = run_load(server, served, model, options.input_len, options.output_len, concurrency,
                        prompts(options, concurrency), seed=99, warmups=min(concurrency, options.max_warmups))
        profiles[server.label] = {
            "load": {k: load[k] for k in ("output_throughput", "p50_ttft_ms", "p50_itl_ms", "server_cpu_s_by_role")},
            "processes": {f"{role} {pid}": finish(recorder, raw, options.profile_seconds + 30)
                          for pid, role, raw, recorder in recorders},
        }
        print(f"[gpu] profile {server.label} c={concurrency}: {json.dumps(profiles[server.label])[:2000]}",
              flush=True)
    return profiles


def save(out: Path, meta: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({**meta, "runs": runs}, indent=1, default=str))
    tmp.rename(out)


def _nvidia_smi(*args: str) -> str:
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True).stdout
    except FileNotFoundError:  # a machine without NVIDIA's driver: nothing to report
        return ""


def gpu_info() -> list[dict[str, str]]:
    out = _nvidia_smi("--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader")
    return [dict(zip(("index", "name", "memory", "driver"), (c.strip() for c in line.split(","))))
            for line in out.splitlines() if line.strip()]


def run(options: argparse.Namespace) -> None:
    model = options.model or model_dir(options.shape, Path(options.models))
    settings = {key: json.loads(value) for key, value in (item.split("=", 1) for item in options.set)}
    app = app_config(options.shape, model, options.replicas, options.backend, settings)
    if options.router:
        app = behind_router(app, options.router)
    gpus = gpu_info()
    card = gpus[0]["name"].replace("NVIDIA ", "").replace(" ", "-") if gpus else "unknown"
    label = options.label or options.mode
    out = Path(options.out) / f"gpu-{options.shape}-{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "issue": 6, "mode": options.mode, "shape": options.shape, "app": app, "options": vars(options),
        "command": " ".join(sys.argv), "machine": machine_info(), "gpus": gpus, "card": card,
        "versions": package_versions(Path(sys.executable), ["vllm", "torch", "ray", "fastapi", "uvicorn",
                                                             "transformers", "pydantic"]),
        "loadavg": loadavg(), "session": options.session or _nvidia_smi("--query-gpu=uuid", "--format=csv,noheader",
                                                                         "-i", "0").strip(),
    }
    print(f"[gpu] app config: {json.dumps(app)}", flush=True)
    servers: list[Server] = []
    if options.mode in ("ours", "both"):
        servers.append(ours_on_ray(app, gpus="0" if options.mode == "both" else None, label=label if
                                   options.mode == "ours" else "ours"))
    if options.mode in ("bare", "both"):
        servers.append(bare_server(app, model, gpus="1" if options.mode == "both" else None))
    with running(*servers):
        try:
            measure(servers, app, model, options, meta, out)
        finally:
            if options.keep_logs:
                keep_logs(servers, Path(options.out) / f"logs-{options.shape}-{label}.tar.gz")


def keep_logs(servers: list[Server], archive: Path) -> None:
    """Ray's session logs (Serve, replica, vLLM workers) and bare vLLM's log, for a machine that will be gone."""
    import tarfile

    with tarfile.open(archive, "w:gz") as tar:
        for server in servers:
            if isinstance(server, OurServe):
                logs = server.ray.temp_dir / "session_latest" / "logs"
                for path in sorted(logs.rglob("*")) if logs.exists() else []:
                    if path.is_file() and (path.suffix in (".log", ".err", ".out") or "serve" in path.parts):
                        tar.add(path, arcname=f"{server.label}/{path.relative_to(logs)}")
            elif isinstance(server, BareVLLM):
                tar.add(server.log, arcname=f"{server.label}/{server.log.name}")


def _diagnostic(report: Any, server: Server) -> dict[str, Any]:
    """A report on the side of the measurement: its failure is recorded, and the benchmark goes on."""
    try:
        return report(server)
    except Exception as error:  # noqa: BLE001 - whatever broke, the numbers matter more
        return {"error": f"{type(error).__name__}: {error}"}


def measure(servers: list[Server], app: dict[str, Any], model: Path, options: argparse.Namespace,
            meta: dict[str, Any], out: Path) -> None:
    for server in servers:  # one at a time: both compile at start
        started = time.time()
        server.start()
        meta[f"{server.label}_startup_s"] = round(time.time() - started, 1)
        print(f"[gpu] {server.label} up in {meta[f'{server.label}_startup_s']}s at {server.base_url}", flush=True)
        if isinstance(server, OurServe):
            meta["placement_at_start"] = _diagnostic(placement_report, server)
            print(f"[gpu] placement: {json.dumps(meta['placement_at_start'].get('checks'))}", flush=True)
    save(out, meta, [])
    runs = bench(servers, app, model, options, meta, out)
    if options.profile:
        meta["profiles"] = _diagnostic(lambda _: profile(servers, app, model, options, out.parent), servers[0])
        save(out, meta, runs)
    for server in servers:
        if isinstance(server, OurServe):
            # Later than at start: Serve reports a replica that cannot be scheduled after a while.
            meta["placement_after_bench"] = _diagnostic(placement_report, server)
            print(f"[gpu] serve says: {json.dumps(meta['placement_after_bench'].get('serve_deployment'))}",
                  flush=True)
    save(out, meta, runs)


# ---- the table ------------------------------------------------------------------------------------------------


def table(paths: list[Path]) -> str:
    """One row per (shape, server, concurrency), medians over repetitions, and the ratio to bare of the same
    shape and card."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    rows: dict[tuple[str, str, str, str, int], list[dict]] = {}
    for result in results:
        for r in result["runs"]:
            key = (result.get("session", ""), result["card"], result["shape"], r["server"], r["concurrency"])
            rows.setdefault(key, []).append(r)
    lines = ["| machine | card | shape | server | concurrency | " + " | ".join(t for _, t in METRICS)
             + " | x bare tok/s | TTFT p50 - bare (ms) | TTFT limit (ms) | runs |",
             "|---|---|---|---|---|" + "---|" * (len(METRICS) + 4)]
    order = lambda kv: (kv[0][2], kv[0][0], kv[0][4], kv[0][3] != "bare", kv[0][3])  # noqa: E731
    for (session, card, shape, server, conc), runs in sorted(rows.items(), key=order):
        value = {key: median([r[key] for r in runs]) for key, _ in METRICS}
        bare = rows.get((session, card, shape, "bare", conc))
        ratio = delta = limit = ""
        if bare and server != "bare":
            bare_tput = median([r["output_throughput"] for r in bare])
            bare_ttft = median([r["p50_ttft_ms"] for r in bare])
            ratio = f"{value['output_throughput'] / bare_tput:.3f}"
            delta = f"{value['p50_ttft_ms'] - bare_ttft:+.1f}"
            limit = f"{10 + 0.05 * bare_ttft:.1f}"
        cells = [f"{value[k]:,.0f}" if k == "output_throughput" else f"{value[k]:.1f}" for k, _ in METRICS]
        ok = "" if all(r["tokens_ok"] for r in runs) else " (token count off)"
        lines.append(f"| {session} | {card} | {shape} | {server}{ok} | {conc} | " + " | ".join(cells)
                     + f" | {ratio} | {delta} | {limit} | {len(runs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["ours", "bare", "both", "table"])
    parser.add_argument("paths", nargs="*", type=Path, help="table: result files")
    parser.add_argument("--shape", choices=["7b", "70b"], default="70b")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--models", default="/tmp/gpu-models", help="where the weightless shapes are written")
    parser.add_argument("--model", type=Path, help="an existing model directory instead of the shape's")
    parser.add_argument("--set", action="append", default=[], metavar="ARG=JSON",
                        help="override one of the app's args, e.g. --set max_model_len=1024")
    parser.add_argument("--replicas", type=int, help="override the stack's num_replicas (default: the stack's)")
    parser.add_argument("--backend", choices=["ray", "mp"], help="vLLM executor for tensor parallelism in ours")
    parser.add_argument("--label", help="server label in the results (default: the mode)")
    parser.add_argument("--session", help="pairs ours with bare in the table (default: the machine's GPU 0 UUID)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--min-prompts", type=int, default=16, help="prompts per run: max(this, waves x concurrency)")
    parser.add_argument("--waves", type=int, default=2, help="prompts per run: max(min-prompts, this x concurrency)")
    parser.add_argument("--router", nargs="?", const=HOSTED, metavar="hosted|REPLICAS",
                        help="ours: the model behind the router of several models (serving_app:multi_model_app_builder)"
                             ": hosted in the router's replicas (the default), or behind a router of REPLICAS replicas "
                             "of its own")
    parser.add_argument("--profile", type=int, metavar="CONCURRENCY",
                        help="after the runs, one more load at this concurrency with py-spy on each frontend process")
    parser.add_argument("--profile-seconds", type=int, default=15)
    parser.add_argument("--py-spy", default="py-spy", help="py-spy's executable (for --profile)")
    parser.add_argument("--max-warmups", type=int, default=4)
    parser.add_argument("--keep-logs", action="store_true", help="archive the servers' logs next to the results")
    options = parser.parse_args()
    # A time limit's SIGTERM unwinds like an error: servers stopped, logs kept.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    if options.mode == "table":
        print(table(options.paths))
    else:
        run(options)


if __name__ == "__main__":
    main()

"""A replica's resource shape, decided once: what Serve reserves (`deployment_options`) and what the preview checks
place (`replica_demand`) both come from `replica_shape`. Importable without Ray."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .engines.options import VLLMOptions
from .serve_args import ServeArgs


@dataclass(frozen=True)
class ReplicaShape:
    actor_options: dict[str, Any]  # the replica actor's own reservation
    bundles: Optional[list[dict[str, float]]] = None  # a placement group: the actor takes the first bundle
    strategy: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def demand(self) -> dict[str, float]:
        """Everything one replica reserves, summed (its engine's workers included)."""
        if self.bundles is not None:
            total: dict[str, float] = {}
            for bundle in self.bundles:
                for name, amount in bundle.items():
                    total[name] = total.get(name, 0.0) + amount
            return total
        demand: dict[str, float] = {"CPU": self.actor_options["num_cpus"]}
        if self.actor_options.get("num_gpus"):
            demand["GPU"] = float(self.actor_options["num_gpus"])
        demand.update(self.actor_options.get("resources", {}))
        return demand


def replica_shape(args: ServeArgs) -> ReplicaShape:
    actor_options: dict[str, Any] = {"num_cpus": args.num_cpus}
    if args.resources:
        actor_options["resources"] = dict(args.resources)
    options = args.options
    if isinstance(options, VLLMOptions) and options.uses_ray_workers(args.tensor_parallel_size):
        # vLLM's Ray workers take the GPU bundles; the replica itself only needs the first bundle's CPUs. One node:
        # tensor parallelism across nodes is slower than across NVLink.
        head_bundle = {"CPU": args.num_cpus, **args.resources}
        return ReplicaShape(actor_options, [head_bundle] + [{"GPU": 1.0}] * args.tensor_parallel_size, "STRICT_PACK")
    if args.gpu_count:
        # One GPU, or vLLM's "mp" backend: its worker processes are the replica's children and use its GPUs.
        actor_options["num_gpus"] = args.gpu_count
    return ReplicaShape(actor_options)


def replica_demand(args: ServeArgs) -> dict[str, float]:
    """Ray resources one replica reserves (its engine's GPUs included)."""
    return replica_shape(args).demand()


def deployment_options(args: ServeArgs) -> dict[str, Any]:
    """Serve's options for the deployment: replica count, concurrency and the shape above."""
    shape = replica_shape(args)
    options: dict[str, Any] = {**replica_count_options(args), **serve_admission_options(args)}
    if shape.bundles is not None:
        options["placement_group_bundles"] = shape.bundles
        options["placement_group_strategy"] = shape.strategy
    options["ray_actor_options"] = shape.actor_options
    return options


def replica_count_options(args: ServeArgs) -> dict[str, Any]:
    """A fixed num_replicas, or Serve's autoscaling_config; its target load is set against what one replica admits
    at once (max_ongoing_requests), not Serve's own max_ongoing_requests, which is set higher (below)."""
    if args.autoscaling_config is not None:
        return {"autoscaling_config": args.autoscaling_config.serve_options(args.max_ongoing_requests)}
    return {"num_replicas": args.num_replicas}


def serve_admission_options(args: ServeArgs) -> dict[str, Any]:
    """Serve's own concurrency limits, set above the replica's admission (serving_app.limits.Admission): that admits
    max_ongoing_requests + queue_limit and sheds the rest with an OpenAI error body, which Serve cannot give (its
    503 says "Request dropped due to backpressure" in plain text). Serve passes twice what we admit so a burst
    reaches our shedding; beyond that its own bounded queue sheds with the same 503 and Retry-After."""
    admitted = args.max_ongoing_requests + args.queue_limit
    return {
        "max_ongoing_requests": 2 * admitted,
        "max_queued_requests": admitted,
        "backpressure_config": {"status_code": 503, "retry_after_s": args.retry_after_s},
    }

"""Serve's autoscaling of a router that hosts the default model (serving_app.router): it scales on that model's own
requests, which its replicas report, not on every request they take in (the other models' pass through them too).

Serve's controller imports no code of ours: it runs the policy from its module pickled by value (Ray 2.60
`AutoscalingPolicy.serialize_policy`), so this module imports nothing of serving_app. Serve's wrapper around a
policy applies the config's delays, factors and min/max bounds to what it returns, as for its own policy.
"""

from __future__ import annotations

from typing import Any

# The metric a hosting router's replicas report (record_autoscaling_stats): its hosted model's running and queued
# requests.
HOSTED_REQUESTS = "hosted_model_requests"
POLICY = f"{__name__}:scale_on_hosted_requests"


def scale_on_hosted_requests(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Serve's default rule (replicas = ongoing requests / target per replica) over the hosted model's requests."""
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas, {}
    per_replica = (ctx.aggregated_metrics or {}).get(HOSTED_REQUESTS, {})
    return sum(per_replica.values()) / ctx.config.get_target_ongoing_requests(), {}

"""Replica autoscaling: Ray Serve's own `autoscaling_config`, typed with Serve's field names (Ray 2.60
`ray.serve.config.AutoscalingConfig`, its public, non-deprecated fields), so a typo or an impossible range fails at
`pulumi preview`. Importable without Ray.

Serve adds a replica when the ongoing requests per replica (running and queued at it), averaged over
`look_back_period_s`, stay above `target_ongoing_requests` for `upscale_delay_s`, and removes one when they stay below
it for `downscale_delay_s`. Replicas it cannot place wait for the Ray autoscaler (KubeRay's in-tree autoscaler in the
cluster) to add a node. With `min_replicas: 0` an idle application gives all its replicas back; the next request
waits (in Serve's proxy, which HAProxy falls back to when a route has no replica) until one has started.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Serve's metrics_interval_s default (deprecated as a field): a look-back window must hold more than one sample.
METRICS_INTERVAL_S = 10.0


class AutoscalingConfig(BaseModel):
    """`autoscaling_config` of one deployment; only the fields given are passed to Serve (its defaults stay its
    own), except `target_ongoing_requests`, whose Serve default (2) suits a replica that serves one request at a
    time, not an engine that batches: unset, it is half the replica's max_ongoing_requests (`target_for`)."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(default=1, ge=0, le=1024, description="0 allows scaling to zero when idle.")
    max_replicas: int = Field(ge=1, le=1024)
    initial_replicas: Optional[int] = Field(default=None, ge=0, le=1024, description="Default: min_replicas.")
    target_ongoing_requests: Optional[float] = Field(
        default=None, gt=0, description="Ongoing requests per replica Serve scales towards; default: half of "
                                        "max_ongoing_requests.")
    upscale_delay_s: Optional[float] = Field(default=None, ge=0, description="Serve's default: 30.")
    downscale_delay_s: Optional[float] = Field(default=None, ge=0, description="Serve's default: 600.")
    downscale_to_zero_delay_s: Optional[float] = Field(
        default=None, ge=0, description="From 1 replica to 0; default: downscale_delay_s.")
    look_back_period_s: Optional[float] = Field(default=None, gt=METRICS_INTERVAL_S, description="Serve's default: 30.")
    upscaling_factor: Optional[float] = Field(default=None, gt=0)
    downscaling_factor: Optional[float] = Field(default=None, gt=0)
    aggregation_function: Optional[Literal["mean", "max", "min"]] = None

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas: {self.max_replicas} is below min_replicas {self.min_replicas}")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError(f"initial_replicas: {self.initial_replicas} is outside min_replicas..max_replicas "
                             f"({self.min_replicas}..{self.max_replicas})")
        if self.downscale_to_zero_delay_s is not None and self.min_replicas > 0:
            raise ValueError("downscale_to_zero_delay_s: applies only with min_replicas 0")
        return self

    def target_for(self, max_ongoing_requests: int) -> float:
        return self.target_ongoing_requests or max(1, max_ongoing_requests // 2)

    def serve_options(self, max_ongoing_requests: int) -> dict[str, Any]:
        """Serve's `autoscaling_config` for a replica admitting `max_ongoing_requests` at once."""
        options = self.model_dump(exclude_none=True)
        options["target_ongoing_requests"] = self.target_for(max_ongoing_requests)
        return options


def replica_range(autoscaling: Optional[AutoscalingConfig], fixed: int) -> tuple[int, int]:
    """(fewest, most) replicas of a deployment: autoscaling_config's min..max, else its fixed count for both."""
    if autoscaling is not None:
        return autoscaling.min_replicas, autoscaling.max_replicas
    return fixed, fixed

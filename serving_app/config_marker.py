"""The empty Serve application each RayService config carries beside its own (infra/rollout.py): its name is the
hash of the rest of the config, and KubeRay copies application names into the RayService's status, so `pulumi up`
can tell the statuses of the config it applied from those of the one before. No route, no CPU."""

from ray import serve


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class ConfigMarker:
    def __call__(self, request) -> str:
        return "ok"


app = ConfigMarker.bind()

"""What `pulumi up` waits for on a RayService, and what it reports, as plain data (no Pulumi import).

pulumi-kubernetes awaits a custom resource only through `pulumi.com/waitFor`: JSONPath expressions on the live
object, checked once its status.observedGeneration reaches metadata.generation, with no way to fail early (only its
timeout). Two facts of KubeRay 1.7 shape the expression:
- `Ready` counts serve endpoints, not applications: after an in-place serveConfigV2 update it stays True while the
  new applications deploy or fail.
- In the reconcile that submits a new serveConfigV2, KubeRay writes the application statuses it read *before*
  submitting, together with the new observedGeneration: the old config's RUNNING would pass for the new one's.
So every serveConfigV2 carries one more, empty application whose name is the hash of the rest (CONFIG_MARKER):
KubeRay copies application names into the status, and a status naming this config's marker was read after Serve took
this config. The await ends when this config has settled: every application RUNNING and Ready (success), an
application DEPLOY_FAILED, or KubeRay's initializing timeout; the program then reads the status the await ended on and
fails with the applications' own messages (rollout_problems).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

import yaml

CONFIG_MARKER_IMPORT = "serving_app.config_marker:app"
CONFIG_MARKER_PREFIX = "config-"
TIMEOUT_REASON = "InitializingTimeout"


def with_config_marker(config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The Serve config with its marker application appended, and the marker's name."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    marker = CONFIG_MARKER_PREFIX + digest
    # No route: never reached over HTTP. Zero CPUs: it fits beside anything, even a head with rayCpus 0.
    application = {"name": marker, "route_prefix": None, "import_path": CONFIG_MARKER_IMPORT}
    return {**config, "applications": [*config["applications"], application]}, marker


def serve_config_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)


def _settled_filter(marker: str, applications: int) -> str:
    """An RFC 9535 filter over the RayService's top-level members (only `status` has these fields)."""
    def apps(side: str) -> str:
        return f"@.{side}.applicationStatuses"

    active = apps("activeServiceStatus")
    running = (f"count({active}[?!(@.status == 'RUNNING')]) == 0 && {active}['{marker}'].status == 'RUNNING' && "
               f"count({active}.*) == {applications} && @.conditions[?@.type == 'Ready' && @.status == 'True']")
    failed = [f"{apps(side)}['{marker}'] && count({apps(side)}[?@.status == 'DEPLOY_FAILED']) > 0"
              for side in ("activeServiceStatus", "pendingServiceStatus")]
    timed_out = f"@.conditions[?@.type == 'Ready' && @.reason == '{TIMEOUT_REASON}']"
    return " || ".join(f"({part})" for part in (running, *failed, timed_out))


def wait_for(marker: str, applications: int) -> str:
    """The pulumi.com/waitFor value: this config settled (see the module docstring). pulumi-kubernetes splits a
    jsonpath= expression at a lone `=` and ends the path at the first `}`: the filter has neither."""
    return f"jsonpath={{$[?{_settled_filter(marker, applications)}]}}"


def _app_lines(statuses: dict[str, Any], side: str) -> list[str]:
    lines = []
    for name, app in sorted(statuses.items()):
        if app.get("status") == "RUNNING":
            continue
        line = f"{side} application {name}: {app.get('status')}"
        if app.get("message"):
            line += f": {app['message']}"
        for deployment, state in sorted((app.get("serveDeploymentStatuses") or {}).items()):
            if state.get("status") != "HEALTHY" and state.get("message"):
                line += f"\n    deployment {deployment}: {state.get('status')}: {state['message']}"
        lines.append(line)
    return lines


def rollout_problems(status: Optional[dict[str, Any]], marker: str, name: str, initializing_timeout: str) -> list[str]:
    """Why the status the await ended on is not this config serving; empty when it is (or when it is not known)."""
    if not status:
        return []
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    sides = [(side, (status.get(key) or {}).get("applicationStatuses") or {})
             for side, key in (("active", "activeServiceStatus"), ("pending", "pendingServiceStatus"))]
    details = [line for side, statuses in sides if marker in statuses for line in _app_lines(statuses, side)]
    if ready.get("reason") == TIMEOUT_REASON:
        return [f"RayService {name} did not become ready within rayService.initializingTimeout ({initializing_timeout}):"
                f" {ready.get('message', '')}. KubeRay 1.7 gives up on it for good: it deleted its Ray clusters and "
                "ignores every later change. Fix what kept it from starting, then `pulumi up` again: it replaces "
                "the RayService.", *details]
    if details:
        return [f"RayService {name}: the new Serve config did not deploy:", *details]
    return []

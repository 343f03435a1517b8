"""A real Prometheus server for the end-to-end tests (Debian's `prometheus` package, installed by
scripts/install_test_services.sh): its own loopback port and temporary storage, a config checked by promtool,
scraping a local Ray head through the service-discovery file Ray writes, and queried over its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional

from devtools.local_ray import free_port

SCRAPE_INTERVAL_S = 1


def ray_discovery_file(ray_temp_dir: Path) -> Path:
    """The Prometheus file_sd target list Ray keeps up to date in its session directory."""
    return Path(ray_temp_dir) / "session_latest" / "prom_metrics_service_discovery.json"


def config(ray_temp_dir: Path, static_targets: tuple[str, ...] = ()) -> str:
    jobs = [{"job_name": "ray", "file_sd_configs": [{"files": [str(ray_discovery_file(ray_temp_dir))],
                                                      "refresh_interval": "5s"}]}]
    if static_targets:
        jobs.append({"job_name": "static", "static_configs": [{"targets": list(static_targets)}]})
    body = {"global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
            "scrape_configs": jobs}
    return json.dumps(body, indent=2)  # JSON is YAML


class Prometheus:
    def __init__(self, workdir: Path, ray_temp_dir: Path, static_targets: tuple[str, ...] = ()):
        for tool in ("prometheus", "promtool"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed: run scripts/install_test_services.sh")
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_file = self.workdir / "prometheus.yml"
        self.config_file.write_text(config(ray_temp_dir, static_targets))
        checked = subprocess.run(["promtool", "check", "config", str(self.config_file)], capture_output=True,
                                 text=True, timeout=60)
        if checked.returncode != 0:
            raise RuntimeError(f"promtool rejects the config:\n{checked.stdout}{checked.stderr}")
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 60) -> "Prometheus":
        self.log = open(self.workdir / "prometheus.log", "w")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={self.config_file}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError("prometheus did not become ready")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.log.close()

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; its `data`, or an AssertionError with Prometheus's error (a bad query)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        assert body["status"] == "success", f"{params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str, at: Optional[float] = None) -> list[dict[str, Any]]:
        params = {"query": expr} if at is None else {"query": expr, "time": at}
        return self.api("query", **params)["result"]

    def value(self, expr: str, at: Optional[float] = None) -> float:
        """A query that sums to one number (0 when it has no series)."""
        return sum(float(series["value"][1]) for series in self.query(expr, at))

    def by(self, expr: str, label: str, at: Optional[float] = None) -> dict[str, float]:
        return {series["metric"].get(label, ""): float(series["value"][1]) for series in self.query(expr, at)}

    def query_range(self, expr: str, start: float, end: float, step: float = 2) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def wait_for(self, expr: str, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(SCRAPE_INTERVAL_S)

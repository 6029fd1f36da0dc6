"""The suite's Ray, started once per session.

- `shared_head()`: one head node on 127.0.0.1 (2 CPUs, 2 logical GPUs, the dashboard for `ray job
  submit`), started on first use by the tests that need Ray and stopped at the end of the session.
  This process connects to it as a driver (`connect`); subprocess drivers and `ray job submit` get
  its addresses.
  The node tests add a one-CPU node to it (conftest's `node_cluster`, `add_node`) and run last.

It is a `ray.cluster_utils.Cluster`, i.e. the `ray._private.node.Node` that `ray start --head`
runs, minus what the tests do not need and what cannot start reliably on the CI VM:
- the Ray Client server, which `ray start --head` always starts and which gives up after a fixed
  30 s waiting for the raylet ("Timed out waiting for node info"), after which `ray start --block`
  stops the whole head (seen 3 times in a row here);
- the autoscaler monitor and the log monitor, which compete for the CPU with the dashboard agent,
  and the raylet aborts when that agent has not written its port files within a fixed ~15 s
  ("Timed out waiting for file .../metrics_agent_port").

Loopback only: Ray replaces 127.0.0.1 in a driver's address by the machine's IP unless
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (conftest sets it for the session and every subprocess).
"""

from __future__ import annotations

import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
NODE_ARGS = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_log_monitor": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli() -> list[str]:
    ray_bin = Path(sys.executable).with_name("ray")
    return [str(ray_bin)] if ray_bin.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


@dataclass
class Head:
    """A running cluster and where to reach it."""

    cluster: object  # ray.cluster_utils.Cluster
    address: str  # GCS, for ray.init / RAY_ADDRESS
    dashboard: str | None  # http URL, for `ray job submit --address`

    def stop(self) -> None:
        disconnect()
        self.cluster.shutdown()


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f}s")


def start_head() -> Head:
    """The suite's head on 127.0.0.1: NODE_ARGS with 2 CPUs, 2 logical GPUs and the dashboard."""
    from ray.cluster_utils import Cluster

    port = free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        **NODE_ARGS, "num_cpus": 2, "num_gpus": 2, "no_monitor": True, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": port})
    try:
        cluster.wait_for_nodes()
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/api/version", timeout=120)
    except Exception:
        cluster.shutdown()
        raise
    return Head(cluster, cluster.address, url)


def add_node(cluster):
    """One more one-CPU node in `cluster`."""
    node = cluster.add_node(**NODE_ARGS)
    cluster.wait_for_nodes()
    return node


_shared: Head | None = None


def shared_head() -> Head:
    """The session's head, started on first use (and again if it died)."""
    global _shared
    if _shared is None:
        _shared = start_head()
    return _shared


def stop_shared_head() -> None:
    global _shared
    disconnect()
    if _shared is not None:
        _shared.stop()
        _shared = None


def connect(address: str):
    """This process as a driver of the cluster at `address`; the `pipeline` package is shipped to
    the actors as a job-level py_modules entry, as jobs/generate.py does for a driver outside a job."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, runtime_env={"py_modules": [str(REPO / "pipeline")]},
                 log_to_driver=False)
    return ray


def disconnect() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()

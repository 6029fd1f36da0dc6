"""The suite's Ray, started once per session.

- `shared_head()`: one head node on 127.0.0.1 (2 CPUs, 2 logical GPUs; the dashboard for `ray job
  submit` when a test asks for it), started on first use by the tests that need Ray and stopped at the
  end of the session.
  This process connects to it as a driver (`connect`); subprocess drivers and `ray job submit` get
  its addresses.
  The node tests add a one-CPU node to it, removed after them (conftest's `node_cluster`, `add_node`).

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

Token authentication on, as the README's cluster path runs it: `use_token(home)` writes a token
to `<home>/.ray/auth_token` (where `ray get-auth-token --generate` puts it) and sets
RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH for this process and every subprocess, so the head, the
drivers (this process, subprocess drivers, `ray job submit` and the jobs it starts) all hold it, and
a private Ray a test starts uses it too. The suite never reads or writes the user's ~/.ray.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_enable_worker_prestart": "0", "RAY_prestart_worker_first_driver": "0",
                "RAY_enable_metrics_collection": "0", "RAY_task_events_report_interval_ms": "0", "RAY_event_stats": "0"}
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def use_token(home: Path) -> str:
    """A token in `home`/.ray/auth_token, and this process (and its children) set to use it."""
    path = home / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_hex(32))
    for k in AUTH_ENV:
        os.environ.pop(k, None)
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)})
    return path.read_text().strip()


def without_auth(env: dict) -> dict:
    """`env` with no Ray token settings (a machine that has none)."""
    return {k: v for k, v in env.items() if k not in AUTH_ENV and k != "RAY_ADDRESS"}
NODE_ARGS = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_log_monitor": False}


def node_args(**more) -> dict:
    """NODE_ARGS for one more node on this machine: its dashboard agent on a free port (Ray's default,
    52365, is one port for every node: a second head's agent, e.g. another pytest-xdist worker's, could
    not bind it and never registers) and worker ports from this xdist worker's own range."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    low = 20000 + 4000 * (worker % 8)
    return {**NODE_ARGS, "dashboard_agent_listen_port": free_port(), "min_worker_port": low,
            "max_worker_port": low + 3999, **more}


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
        shutil.rmtree(os.environ.pop("RAY_TMPDIR", ""), ignore_errors=True)


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f}s")


def start_head(dashboard: bool = True) -> Head:
    """The suite's head on 127.0.0.1: NODE_ARGS with 2 CPUs, 2 logical GPUs and, with `dashboard`, the
    dashboard (`ray job submit` goes through it; it is eleven processes, seconds of CPU to start)."""
    from ray.cluster_utils import Cluster

    # Its own Ray temp dir: a job's driver connects to "auto", i.e. the cluster last written to
    # <temp dir>/ray/ray_current_cluster, which would be another xdist worker's head in the shared /tmp/ray.
    # Every process of this head (and the jobs it runs) inherits it. Short: socket paths must fit 107 bytes.
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray-")
    port = free_port()
    web = {"dashboard_host": "127.0.0.1", "dashboard_port": port} if dashboard else {}
    cluster = Cluster(initialize_head=True, head_node_args=node_args(
        num_cpus=2, num_gpus=2, no_monitor=True, include_dashboard=dashboard, **web))
    try:
        cluster.wait_for_nodes()
        url = f"http://127.0.0.1:{port}" if dashboard else None
        if url:
            _wait_http(f"{url}/api/gcs_healthz", timeout=120)  # answers without a token
            _wait_job_agent(cluster, timeout=120)
    except Exception:
        cluster.shutdown()
        raise
    return Head(cluster, cluster.address, url)


def _wait_job_agent(cluster, timeout: float) -> None:
    """Until the head's dashboard agent has registered: the dashboard answers before it, and a job
    submitted meanwhile waits only 10 s for it ("No available agent to submit job"; seen on a loaded
    2-core VM)."""
    from ray._private.ray_constants import KV_NAMESPACE_DASHBOARD
    from ray._raylet import GcsClient
    from ray.dashboard.consts import DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX

    gcs = GcsClient(address=cluster.address)
    key = f"{DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX}{cluster.head_node.node_id}".encode()
    deadline = time.monotonic() + timeout
    while not gcs.internal_kv_get(key, namespace=KV_NAMESPACE_DASHBOARD):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the head's dashboard agent did not register in {timeout:.0f}s")
        time.sleep(0.2)


def add_node(cluster):
    """One more one-CPU node in `cluster`."""
    node = cluster.add_node(**node_args())
    cluster.wait_for_nodes()
    return node


def remove_worker_nodes(cluster, timeout: float = 30) -> None:
    """Every node but the head gone, and known to be gone: no later actor is placed on a dead node."""
    import ray

    gone = {node.node_id for node in cluster.worker_nodes}
    for node in list(cluster.worker_nodes):
        cluster.remove_node(node)
    deadline = time.monotonic() + timeout
    while any(n["Alive"] and n["NodeID"] in gone for n in ray.nodes()):
        assert time.monotonic() < deadline, f"removed nodes still alive after {timeout:g} s: {ray.nodes()}"
        time.sleep(0.1)


_shared: Head | None = None


def shared_head(dashboard: bool = False) -> Head:
    """The session's head, started on first use; with its dashboard only if a test that submits jobs
    asks for it (conftest runs those first on the worker that runs the Ray tests; another worker's head,
    for the last shared-head tests, needs none). A head without one is replaced when such a test asks."""
    global _shared
    if _shared is not None and dashboard and _shared.dashboard is None:
        stop_shared_head()
    if _shared is None:
        _shared = start_head(dashboard)
    return _shared


def running_head() -> Head | None:
    """The session's head if it runs (never starts one)."""
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

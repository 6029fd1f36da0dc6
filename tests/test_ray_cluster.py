"""jobs/generate.py on Ray topologies: logical GPUs, two nodes, and `ray job submit` to a head node.

- GPU pinning without GPUs: Ray started with 2 logical GPUs; each sampler actor gets its own GPU id
  (ray.get_gpu_ids(), CUDA_VISIBLE_DEVICES) and the shards' stats say which GPU made them.
- A two-node `ray.cluster_utils.Cluster`: the sampler actors land on both nodes and both commit.
- `ray start --head` on 127.0.0.1 + `ray job submit --working-dir . --runtime-env ...` runs the real
  job end to end (tiny model) and the job status is SUCCEEDED. The head runs with `--block` in a
  private --temp-dir and is stopped by terminating that process (which stops its Ray processes),
  never with `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from test_generate import (
    RAY_ADDRESS_ENV,
    Events,
    FakeWorker,
    assert_complete,
    gen,
    init_test_ray,
    make_cfg,
    pickle_fakes_by_value,
    start_test_cluster,
    synthgen_cache,  # noqa: F401 - fixture
    write_prompts,
)

from pipeline.sink import committed_shards, stats_path
from pipeline.storage import open_location

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.ray, pytest.mark.own_ray]


@pytest.fixture
def fresh_ray(synthgen_cache):  # noqa: F811
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    yield ray
    ray.shutdown()


def test_each_sampler_actor_gets_its_own_gpu(fresh_ray, tmp_path):
    ray = fresh_ray
    init_test_ray(ray, num_cpus=2, num_gpus=2)
    if ray.cluster_resources().get("GPU", 0) < 2:
        pytest.skip(f"the cluster named by {RAY_ADDRESS_ENV} has fewer than 2 (logical) GPUs")
    pickle_fakes_by_value()
    prompts = write_prompts(tmp_path / "p8.parquet", [f"prompt {i}" for i in range(8)])
    out = tmp_path / "out"
    ev = Events()
    res = gen.run_job(make_cfg(prompts, out, "ray.gpus_per_worker=1"), worker_cls=FakeWorker, hooks=ev)
    assert res.exit_code == 0, res.summary
    infos = {p["slot"]: p["info"] for p in ev.of("actor_ready")}
    assert set(infos) == {"sampler-0", "sampler-1"}
    gpu_sets = [tuple(i["gpu_ids"]) for i in infos.values()]
    assert all(len(g) == 1 for g in gpu_sets) and len(set(gpu_sets)) == 2  # one GPU each, distinct
    assert {i["cuda_visible_devices"] for i in infos.values()} == {g[0] for g in gpu_sets}
    assert {i["device"] for i in infos.values()} == {"cpu"}  # logical GPUs only: the work runs on CPU
    labels = [json.loads((out / stats_path(i)).read_text())["worker"] for i in range(4)]
    assert {lab.split("gpu=")[1].split()[0] for lab in labels} == {g[0] for g in gpu_sets}
    assert {tuple(w["gpu_ids"]) for w in res.summary["workers"].values()} == set(gpu_sets)


def test_two_node_cluster_spreads_shards(fresh_ray, tmp_path):
    cluster = None
    if os.environ.get(RAY_ADDRESS_ENV):
        init_test_ray(fresh_ray)
    else:
        cluster, _ = start_test_cluster(2)
        fresh_ray.init(address=cluster.address)
    try:
        pickle_fakes_by_value()
        nodes = {n["NodeID"] for n in fresh_ray.nodes() if n["Alive"]}
        if cluster is None and len(nodes) < 2:
            pytest.skip(f"the cluster named by {RAY_ADDRESS_ENV} has one node")
        assert len(nodes) == 2
        prompts = write_prompts(tmp_path / "p8.parquet", [f"prompt {i}" for i in range(8)])
        out = tmp_path / "out"
        res = gen.run_job(make_cfg(prompts, out), worker_cls=FakeWorker)
        assert res.exit_code == 0, res.summary
        workers = res.summary["workers"].values()
        assert {w["node_id"] for w in workers if w["shards"] > 0} == nodes
        labels = {json.loads((out / stats_path(i)).read_text())["worker"] for i in range(4)}
        assert {lab.split("/")[1].split()[0] for lab in labels} == {n[:12] for n in nodes}
        assert committed_shards(open_location(str(out))) == set(range(4))
    finally:
        fresh_ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f}s")


DASHBOARD_ENV = "SYNTHGEN_TEST_RAY_DASHBOARD"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_ray_job_submit_end_to_end(fresh_ray, tmp_path, synthgen_cache):  # noqa: F811
    """The command users run. SYNTHGEN_TEST_RAY_DASHBOARD=http://127.0.0.1:<port> submits to a head
    that is already running (machines too slow for Ray's startup windows) instead of starting one."""
    ray_bin = Path(sys.executable).with_name("ray")
    ray_cmd = [str(ray_bin)] if ray_bin.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
    # Everything on the loopback interface: the head, its job drivers and the CLI.
    env = {**os.environ, "SYNTHGEN_CACHE": str(synthgen_cache), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    temp_dir, head, log = None, None, None
    address = os.environ.get(DASHBOARD_ENV)
    try:
        for attempt in (1, 2, 3) if not address else ():  # a raylet that misses its startup window exits
            port, dash = _free_port(), _free_port()
            temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's unix socket paths are limited
            log = open(tmp_path / f"head-{attempt}.log", "wb")
            head = subprocess.Popen(
                ray_cmd + ["start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                           "--num-cpus", "2", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                           "--dashboard-port", str(dash), "--temp-dir", temp_dir],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                _wait_http(f"http://127.0.0.1:{dash}/api/version", head, timeout=600)
                address = f"http://127.0.0.1:{dash}"
                break
            except (RuntimeError, TimeoutError):
                _stop_head(head, log, temp_dir)
                head = log = temp_dir = None
                if attempt == 3:
                    raise
        prompts = write_prompts(tmp_path / "p4.parquet", ["a red fox", "a blue car", "a green tree", "a cat"])
        out = tmp_path / "out"  # absolute: the job's working dir is a temporary copy
        sid = f"synthgen-test-{uuid.uuid4().hex[:8]}"
        submit = subprocess.run(
            ray_cmd + ["job", "submit", "--address", address, "--submission-id", sid, "--working-dir", ".",
                       "--runtime-env", "infra/runtime_env.yaml", "--", "python", "jobs/generate.py",
                       f"input.path={prompts}", "input.id_column=id", f"output.path={out}",
                       "output.shard_size=2", "sampler.steps=2", "sampler.height=32", "sampler.width=32",
                       "ray.num_workers=1", "ray.cpus_per_worker=1", "logging.progress_interval_s=5"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
        status = subprocess.run(ray_cmd + ["job", "status", "--address", address, sid], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=120)
        logs = submit.stdout[-6000:] + submit.stderr[-3000:]
        assert "SUCCEEDED" in status.stdout + status.stderr, logs + status.stdout + status.stderr
        assert submit.returncode == 0, logs
        assert f"output: {out}" in submit.stdout  # the driver says where the output is
        assert "mode=cluster" in submit.stdout or "ray: cluster" in submit.stdout  # joined the head
        assert_complete(out, n_rows=4, n_shards=2)
        summary = json.loads((out / "run" / "summary.json").read_text())
        assert summary["status"] == "succeeded" and summary["ray"]["mode"] == "cluster"
    finally:
        _stop_head(head, log, temp_dir)


def _stop_head(head, log, temp_dir) -> None:
    if head is not None and head.poll() is None:
        head.send_signal(signal.SIGTERM)  # --block: stops this head's Ray processes, nothing else
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
    if head is not None:
        try:  # what the head started and left behind (a failed start): same session, same group
            os.killpg(head.pid, signal.SIGKILL)
        except OSError:
            pass
    if log is not None:
        log.close()
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)

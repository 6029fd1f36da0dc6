"""jobs/generate.py on Ray topologies: logical GPUs, two nodes, and `ray job submit` to a head node.

- GPU pinning without GPUs: the suite's head has 2 logical GPUs; each sampler actor gets its own GPU
  id (ray.get_gpu_ids(), CUDA_VISIBLE_DEVICES) and the shards' stats say which GPU made them.
- A two-node `ray.cluster_utils.Cluster`: the sampler actors land on both nodes and both commit.
- A head node on 127.0.0.1 (the suite's shared head: the Node that `ray start --head` runs, without
  its Ray Client server, see tests/raycluster.py) + `ray job submit --working-dir . --runtime-env
  ...` runs the real job end to end (tiny model) and the job status is SUCCEEDED.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import raycluster
from test_generate import (
    Events,
    FakeWorker,
    assert_complete,
    gen,
    make_cfg,
    pickle_fakes_by_value,
    ray_local,  # noqa: F401 - fixture
    synthgen_cache,  # noqa: F401 - fixture
    write_prompts,
)

from pipeline.sink import committed_shards, stats_path
from pipeline.storage import open_location

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.ray]


def test_each_sampler_actor_gets_its_own_gpu(ray_local, tmp_path):  # noqa: F811
    assert ray_local.cluster_resources().get("GPU", 0) == 2  # the suite's head: 2 logical GPUs
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


@pytest.mark.slow
def test_two_node_cluster_spreads_shards(node_cluster, tmp_path):
    import ray

    pickle_fakes_by_value()
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
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


@pytest.mark.slow
def test_ray_job_submit_end_to_end(ray_head, tmp_path, synthgen_cache):  # noqa: F811
    """The command users run, against a running head on 127.0.0.1."""
    env = {**os.environ, "SYNTHGEN_CACHE": str(synthgen_cache), **raycluster.LOOPBACK_ENV}
    env.pop("RAY_ADDRESS", None)
    ray_cmd = raycluster.ray_cli()
    prompts = write_prompts(tmp_path / "p4.parquet", ["a red fox", "a blue car", "a green tree", "a cat"])
    out = tmp_path / "out"  # absolute: the job's working dir is a temporary copy
    sid = f"synthgen-test-{uuid.uuid4().hex[:8]}"
    submit = subprocess.run(
        ray_cmd + ["job", "submit", "--address", ray_head.dashboard, "--submission-id", sid,
                   "--working-dir", ".", "--runtime-env", "infra/runtime_env.yaml", "--",
                   "python", "jobs/generate.py",
                   f"input.path={prompts}", "input.id_column=id", f"output.path={out}",
                   "output.shard_size=2", "sampler.steps=2", "sampler.height=32", "sampler.width=32",
                   "ray.num_workers=1", "ray.cpus_per_worker=1", "logging.progress_interval_s=5"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    from ray.job_submission import JobStatus, JobSubmissionClient

    status = JobSubmissionClient(ray_head.dashboard).get_job_status(sid)
    logs = submit.stdout[-6000:] + submit.stderr[-3000:]
    assert status == JobStatus.SUCCEEDED, f"{status}: {logs}"
    assert submit.returncode == 0, logs
    assert f"output: {out}" in submit.stdout  # the driver says where the output is
    assert "mode=cluster" in submit.stdout or "ray: cluster" in submit.stdout  # joined the head
    assert_complete(out, n_rows=4, n_shards=2)
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["ray"]["mode"] == "cluster"

"""jobs/generate.py on Ray topologies: logical GPUs and two nodes.

- GPU pinning without GPUs: the suite's head has 2 logical GPUs; each sampler actor gets its own GPU
  id (ray.get_gpu_ids(), CUDA_VISIBLE_DEVICES) and the shards' stats say which GPU made them.
- Two nodes (the shared head plus one added node, a `ray.cluster_utils.Cluster`): the sampler
  actors land on both nodes and both commit.

`ray job submit` to a head on 127.0.0.1 runs in tests/test_chaos.py::
test_driver_killed_then_same_command_again (submitted, driver killed, submitted again: SUCCEEDED).
"""

from __future__ import annotations

import json

import pytest
from test_generate import (
    Events,
    FakeWorker,
    make_cfg,
    pickle_fakes_by_value,
    write_prompts,
)

from pipeline.data.layout import committed_shards, stats_path
from pipeline.data.storage import open_location
from pipeline.driver.job import run_job

pytestmark = [pytest.mark.ray]


def test_each_sampler_actor_gets_its_own_gpu(ray_local, tmp_path):
    assert ray_local.cluster_resources().get("GPU", 0) == 2  # the suite's head: 2 logical GPUs
    prompts = write_prompts(tmp_path / "p8.parquet", [f"prompt {i}" for i in range(8)])
    out = tmp_path / "out"
    ev = Events()
    res = run_job(make_cfg(prompts, out, "ray.gpus_per_worker=1"), worker_cls=FakeWorker, hooks=ev)
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
    res = run_job(make_cfg(prompts, out), worker_cls=FakeWorker)
    assert res.exit_code == 0, res.summary
    workers = res.summary["workers"].values()
    assert {w["node_id"] for w in workers if w["shards"] > 0} == nodes
    labels = {json.loads((out / stats_path(i)).read_text())["worker"] for i in range(4)}
    assert {lab.split("/")[1].split()[0] for lab in labels} == {n[:12] for n in nodes}
    assert committed_shards(open_location(str(out))) == set(range(4))

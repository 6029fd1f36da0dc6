"""ShardWorker without Ray: one spec -> one committed shard; OOM splitting, NaN policy, determinism."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_generate import write_prompts

from pipeline import faults
from pipeline.config import load_config
from pipeline.data.layout import committed_shards
from pipeline.data.source import plan_shards
from pipeline.models.diffusion import load_model
from pipeline.records import FAILED, OK, REJECTED
from pipeline.worker import ShardWorker

PROMPTS = ["a red fox in snow", "", "a lighthouse at dusk", None, "two apples on a plate", "a ship\x07",
           "a quiet harbor", "a steam train"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("in") / "prompts.parquet", PROMPTS)


def make_cfg(prompts_file, out, *extra):
    return load_config([], [f"input.path={prompts_file}", "input.id_column=id", f"output.path={out}",
                            "output.shard_size=4", "sampler.steps=3", "sampler.height=32", "sampler.width=32",
                            "sampler.batch_size=2", *extra])


@pytest.fixture(scope="module")
def model(tiny_cache):
    from pipeline.config import ModelConfig

    return load_model(ModelConfig(id="tiny"))


def run_all(cfg, model):
    w = ShardWorker(cfg, model=model)
    return [w.run(spec) for spec in plan_shards(cfg.input, cfg.output.shard_size)]


def read_tar(path):
    import tarfile

    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def pixels(tar_members):
    return {k: np.asarray(Image.open(io.BytesIO(v))).astype(int) for k, v in tar_members.items()
            if k.endswith(".png")}


def sidecars(out):
    return pa.concat_tables([pq.read_table(p) for p in sorted((out / "shards").glob("*.parquet"))])


def test_every_row_is_a_sample_or_a_recorded_rejection(prompts_file, tmp_path, model):
    cfg = make_cfg(prompts_file, tmp_path)
    stats = run_all(cfg, model)
    assert committed_shards_set(tmp_path) == {0, 1}
    side = sidecars(tmp_path).to_pylist()
    assert sorted(r["row"] for r in side) == list(range(len(PROMPTS)))
    status = {r["prompt_id"]: r["status"] for r in side}
    assert {k for k, v in status.items() if v == REJECTED} == {"p1", "p3", "p5"}
    assert {k for k, v in status.items() if v == OK} == {"p0", "p2", "p4", "p6", "p7"}
    assert sum(s.samples for s in stats) == 5 and sum(s.rejected for s in stats) == 3
    members = read_tar(tmp_path / "shards" / "000000.tar")
    meta = json.loads(members["000000000000.json"])
    assert meta["prompt"] == "a red fox in snow" and meta["prompt_id"] == "p0"
    assert meta["method"] == "cfg" and meta["unet_evals"] == 6 and meta["model"]["id"] == "tiny"
    assert members["000000000000.txt"].decode() == "a red fox in snow"
    assert all(s.unet_evals == 6 * s.samples for s in stats)


def committed_shards_set(out):
    from pipeline.data.storage import open_location

    return committed_shards(open_location(str(out)))


def test_rerun_is_byte_identical_and_batch_size_changes_no_image(prompts_file, tmp_path, model):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_all(make_cfg(prompts_file, a), model)
    run_all(make_cfg(prompts_file, b), model)
    run_all(make_cfg(prompts_file, c, "sampler.batch_size=3"), model)
    for shard in ("000000.tar", "000001.tar"):
        assert (a / "shards" / shard).read_bytes() == (b / "shards" / shard).read_bytes()
        pa_, pc = pixels(read_tar(a / "shards" / shard)), pixels(read_tar(c / "shards" / shard))
        assert pa_.keys() == pc.keys()
        for k in pa_:  # another batch composition moves latents by float noise only
            assert np.abs(pa_[k] - pc[k]).max() <= 2, k


def test_oom_splits_the_batch_then_fails_rows_below_the_floor(prompts_file, tmp_path, model, monkeypatch):
    monkeypatch.setattr(faults, "_RULES", faults._parse("sample:oom:1"))
    monkeypatch.setenv("SYNTHGEN_FAULT_DIR", str(tmp_path))
    stats = run_all(make_cfg(prompts_file, tmp_path / "split"), model)
    assert sum(s.samples for s in stats) == 5  # one OOM: the batch was split and retried
    monkeypatch.setattr(faults, "_RULES", faults._parse("sample:oom"))  # every call runs out of memory
    stats = run_all(make_cfg(prompts_file, tmp_path / "floor"), model)
    side = sidecars(tmp_path / "floor").to_pylist()
    assert sum(s.failed for s in stats) == 5 and {r["status"] for r in side} == {FAILED, REJECTED}
    assert all("out of memory" in r["error"] for r in side if r["status"] == FAILED)


def test_oom_halves_run_after_the_handler_has_released_the_failed_batch(prompts_file, tmp_path, model,
                                                                       monkeypatch):
    """The halves of a batch that ran out of memory are sampled after the except block has ended, so
    no traceback still holds the failed batch's tensors while they run."""
    import sys

    from pipeline import worker as W

    monkeypatch.setattr(faults, "_RULES", faults._parse("sample:oom:1"))
    monkeypatch.setenv("SYNTHGEN_FAULT_DIR", str(tmp_path))
    calls = []
    real = W.generate_batch

    def spy(m, reqs, s, captioner=None, **kw):
        calls.append((len(reqs), sys.exc_info()[1]))
        return real(m, reqs, s, captioner, **kw)

    monkeypatch.setattr(W, "generate_batch", spy)
    stats = run_all(make_cfg(prompts_file, tmp_path / "split"), model)
    assert sum(s.samples for s in stats) == 5
    assert [n for n, _ in calls[:2]] == [1, 1]  # the first batch of 2 ran out of memory: two halves
    assert [exc for _, exc in calls] == [None] * len(calls)


def test_only_out_of_memory_errors_split_a_batch():
    import torch

    assert faults.is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert faults.is_oom(faults.InjectedOOM("CUDA out of memory (injected)"))
    # the CUDA context is broken after this one: splitting the batch cannot help, the attempt fails
    assert not faults.is_oom(RuntimeError("CUDA error: out of memory"))
    assert not faults.is_oom(ValueError("the prompt is out of memory range"))


@pytest.mark.parametrize("policy", ["resample", "fail"])
def test_nonfinite_results_are_never_written(prompts_file, tmp_path, model, monkeypatch, policy):
    monkeypatch.setattr(faults, "_RULES", faults._parse("nonfinite:nan:1:000000000002"))
    monkeypatch.setenv("SYNTHGEN_FAULT_DIR", str(tmp_path))
    out = tmp_path / policy
    run_all(make_cfg(prompts_file, out, f"sampler.nonfinite={policy}"), model)
    members = read_tar(out / "shards" / "000000.tar")
    side = {r["key"]: r for r in sidecars(out).to_pylist()}
    if policy == "resample":
        meta = json.loads(members["000000000002.json"])
        assert meta["resampled"]["attempt"] == 1 and meta["seed"] != meta["resampled"]["original_seed"]
        assert side["000000000002"]["status"] == OK
    else:
        assert "000000000002.png" not in members
        assert side["000000000002"]["status"] == FAILED and "non-finite" in side["000000000002"]["error"]
    for img in pixels(members).values():
        assert img.min() >= 0 and img.max() <= 255


def test_committed_shard_is_not_redone(prompts_file, tmp_path, model):
    cfg = make_cfg(prompts_file, tmp_path)
    w = ShardWorker(cfg, model=model)
    spec = plan_shards(cfg.input, cfg.output.shard_size)[0]
    first = w.run(spec)
    mtime = (tmp_path / "shards" / "000000.tar").stat().st_mtime_ns
    again = w.run(dataclasses.replace(spec))
    assert again.tar_sha256 == first.tar_sha256
    assert (tmp_path / "shards" / "000000.tar").stat().st_mtime_ns == mtime


def test_a_seed_above_2_63_is_stored_losslessly_and_its_shard_commits(tmp_path, model):
    """Seeds up to 2**64 - 1 are valid (torch.Generator's range): the sidecar keeps them exactly and
    the other rows of the shard commit with it (an int64 column used to fail every attempt)."""
    big = 2**63 + 5
    path = tmp_path / "seeds.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "prompt": ["a red fox", "a blue car", "a green tree"],
                             "seed": pa.array([7, big, 2**64 - 1], pa.uint64())}), path)
    cfg = make_cfg(path, tmp_path / "out", "input.seed_column=seed")
    run_all(cfg, model)
    side = {r["prompt_id"]: r for r in sidecars(tmp_path / "out").to_pylist()}
    assert {k: (r["status"], r["seed"]) for k, r in side.items()} == {
        "a": (OK, 7), "b": (OK, big), "c": (OK, 2**64 - 1)}
    metas = {json.loads(v)["prompt_id"]: json.loads(v) for k, v in read_tar(tmp_path / "out" / "shards" / "000000.tar")
             .items() if k.endswith(".json")}
    assert metas["b"]["seed"] == big and metas["c"]["seed"] == 2**64 - 1


def test_bfloat16_runs_on_cpu_for_the_sampler_and_the_captioner(tiny_cache):
    """bfloat16 is allowed on CPU (float16 is refused before a run starts): the tiny SDXL samples and the
    tiny BLIP-2 captions in bfloat16, with finite images, and the metadata says bfloat16."""
    from pipeline.config import load_config
    from pipeline.models.captioner import Captioner
    from pipeline.models.diffusion import load_model
    from pipeline.sampling.batch import SampleRequest, generate_batch

    cfg = load_config(overrides=["model.dtype=bfloat16", "captioner.dtype=bfloat16", "model.device=cpu"])
    model = load_model(cfg.model)
    assert model.unet.dtype == torch.bfloat16 and model.info["dtype"] == "bfloat16"
    cap = Captioner(cfg.captioner, "cpu")
    assert cap.model.dtype == torch.bfloat16
    s = dataclasses.replace(cfg.sampler, method="dnp", steps=2, height=32, width=32)
    out, _ = generate_batch(model, [SampleRequest("a red fox", 1, None)], s, cap)
    assert tuple(out[0].image.shape) == (32, 32, 3) and out[0].finite
    assert isinstance(out[0].metadata["negative_prompt"], str)  # DNP's caption, from the bfloat16 BLIP-2
    with pytest.raises(ValueError, match="model.dtype=float16 runs on CPU here"):
        load_model(load_config(overrides=["model.dtype=float16"]).model, torch.device("cpu"))


def test_what_was_loaded_is_recorded_never_a_pin_that_did_not_apply(tiny_cache, tmp_path, caplog, monkeypatch):
    """A local directory with a revision pin: the pin is reported and dropped, the directory's config
    hash recorded. A hub id (an offline Hugging Face cache holding the tiny model): the revision asked
    for and the commit it resolved to. The cache is pointed to here in this process: huggingface_hub
    read HF_HUB_CACHE and HF_HUB_OFFLINE when it was imported, so its constants are set beside the
    environment (a fresh process for this would cost seconds of CPU importing torch and diffusers)."""
    import shutil

    import huggingface_hub.constants

    from pipeline.config import load_config
    from pipeline.models.diffusion import load_model
    from pipeline.models.provenance import config_sha256
    from pipeline.models.tiny import tiny_sdxl

    local = tmp_path / "my-sdxl"
    shutil.copytree(tiny_sdxl(str(tiny_cache)), local)
    with caplog.at_level("WARNING", logger="pipeline.models.provenance"):
        m = load_model(load_config(overrides=[f"model.id={local}", "model.revision=abc123", "model.device=cpu"]).model)
    assert m.info["revision"] is None and "commit" not in m.info
    assert m.info["local_config_sha256"] == config_sha256(local) and len(config_sha256(local)) == 64
    assert "model.revision=abc123 was not applied" in caplog.text
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--synthgen--tiny-sdxl"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(local, repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    m = load_model(load_config(overrides=["model.id=synthgen/tiny-sdxl", "model.revision=main",
                                          "model.device=cpu"]).model)
    assert [m.info["revision"], m.info["commit"], "local_config_sha256" in m.info] == ["main", commit, False]


def test_an_actor_builds_its_worker_with_the_garbage_collector_paused_then_frozen_out_of_its_sight():
    """pipeline/driver/actors.py `outside_gc`, around the worker's (and the captioner's) construction in
    its actor: no cyclic collection while the imports and models are made, the collector as it was after,
    and what was made no longer walked by it (gc.freeze); a caller that had paused it finds it paused."""
    import gc

    from pipeline.driver.actors import outside_gc

    class Node:
        pass

    during = []
    with outside_gc():
        during.append(gc.isenabled())
        built = Node()
        built.me = built  # a reference cycle, as module and model objects have
    assert during == [False] and gc.isenabled()
    assert not any(o is built for o in gc.get_objects())  # frozen: in no generation the collector walks
    gc.disable()
    try:
        with outside_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()

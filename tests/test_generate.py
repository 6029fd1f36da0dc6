"""The generation job (pipeline/driver, jobs/generate.py): errors before Ray, resume and fingerprint,
dispatch policy, end-to-end runs.

- No Ray: bad config values, missing/empty input and a refused resume exit with code 2 before
  anything starts; the fingerprint ignores what does not change images; a finished output is not
  sampled again.
- The suite's shared local Ray (2 CPUs, started once: ensure_test_ray) with FakeWorker, a light
  stand-in for ShardWorker that writes real committed shards through ShardSink: retries, quarantine,
  requeue on actor death, init failure.
- Local Ray with the real ShardWorker (tiny SDXL, 2 steps, 32x32), compared byte for byte with the
  same dataset made in this process without Ray: planned shards, every row accounted, a sampler
  killed mid-shard, resume of exactly the uncommitted shard, DNP through captioner actors.
Sets are compared, never order.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import raycluster

from pipeline import faults
from pipeline.cli.generate import main as generate_main
from pipeline.config import ConfigError, load_config
from pipeline.data.layout import committed_shards, stats_path, tar_path
from pipeline.data.sink import ShardSink
from pipeline.data.storage import open_location
from pipeline.driver import localray
from pipeline.driver.job import run_job
from pipeline.driver.localray import RayContext, check_resources
from pipeline.driver.plan import FINGERPRINT_VERSION, RunRefused, fingerprint, fingerprint_config, prepare
from pipeline.records import REJECTED, RowOutcome, Sample, ShardSpec, sample_key

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ shared helpers (also used by
# tests/test_chaos.py and tests/test_ray_cluster.py; their fixtures are in conftest.py)


def write_prompts(path: Path, prompts: list[str], ids: list[str] | None = None) -> Path:
    ids = ids or [f"p{i}" for i in range(len(prompts))]
    pq.write_table(pa.table({"id": ids, "prompt": prompts}), path)
    return path


def cli_args(inp: Path, out: Path, *extra: str) -> list[str]:
    """Small and fast: shards of 2 rows, 2 steps at 32x32, 2 sampler actors of 1 CPU."""
    return [f"input.path={inp}", "input.id_column=id", f"output.path={out}", "output.shard_size=2",
            "sampler.steps=2", "sampler.height=32", "sampler.width=32", "sampler.batch_size=2",
            "ray.num_workers=2", "ray.cpus_per_worker=1", "ray.address=local", "ray.max_attempts=2",
            "logging.progress_interval_s=1", *extra]


def make_cfg(inp: Path, out: Path, *extra: str):
    return load_config(overrides=cli_args(inp, out, *extra))


def shard_rows(out: Path) -> dict[int, list[dict]]:
    """Sidecar parquet rows of every committed shard."""
    loc = open_location(str(out))
    return {i: pq.read_table(out / "shards" / f"{i:06d}.parquet").to_pylist() for i in committed_shards(loc)}


def tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as tf:
        return [m.name for m in tf.getmembers()]


def tar_digests(out: Path) -> dict[int, str]:
    return {int(p.name[:6]): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (out / "shards").glob("*.tar")}


def assert_complete(out: Path, n_rows: int, n_shards: int, rejected: set[int] = frozenset()) -> None:
    """Exactly the planned shards are committed; every input row is a sample or a recorded rejection."""
    rows = shard_rows(out)
    assert set(rows) == set(range(n_shards))
    seen = [r["row"] for rs in rows.values() for r in rs]
    assert sorted(seen) == list(range(n_rows)), "every input row exactly once"
    assert {r["row"] for rs in rows.values() for r in rs if r["status"] == REJECTED} == set(rejected)
    assert all(r["status"] in ("ok", REJECTED) for rs in rows.values() for r in rs)
    for i, rs in rows.items():  # the tar holds exactly the ok rows, each key once
        names = tar_members(out / tar_path(i))
        assert len(names) == len(set(names))
        pngs = [n[:-len(".png")] for n in names if n.endswith(".png")]
        assert sorted(pngs) == sorted(r["key"] for r in rs if r["status"] == "ok")
    index = json.loads((out / "index.json").read_text())
    assert {s["shard"] for s in index["shards"]} == set(range(n_shards))


class FakeWorker:
    """ShardWorker's interface without models: one 8x8 image per row, pixels from the key.

    Subclasses switch behaviour per shard and attempt (class attributes travel with the class,
    which is pickled by value into the actors).
    """

    FAIL: dict[int, set[int] | None] = {}  # shard -> attempts that raise (None: every attempt)
    DIE: dict[int, set[int] | None] = {}  # shard -> attempts on which the process dies
    DELAY = 0.2

    def __init__(self, cfg, captioner=None, name=""):
        self.cfg, self.name, self.captioner = cfg, name, captioner
        self.location = open_location(cfg.output.path)

    def describe(self) -> dict:
        return {"name": self.name, "pid": os.getpid(), "device": "cpu",
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "captioner": type(self.captioner).__name__ if self.captioner else None}

    @staticmethod
    def _hit(table: dict, spec: ShardSpec, attempt: int) -> bool:
        return spec.shard_id in table and (table[spec.shard_id] is None or attempt in table[spec.shard_id])

    def run(self, spec: ShardSpec, attempt: int = 1):
        t0 = time.perf_counter()
        time.sleep(self.DELAY)
        if self._hit(self.DIE, spec, attempt):
            os._exit(1)
        if self._hit(self.FAIL, spec, attempt):
            raise RuntimeError(f"fake failure of shard {spec.shard_id} attempt {attempt}")
        planned = dict(spec.planned_rejections)
        with ShardSink(self.location, spec, "png", attempt=attempt) as sink:
            for row in range(spec.row_start, spec.row_stop):
                key = sample_key(spec.shard_id, row - spec.row_start)
                if row in planned:
                    sink.write(RowOutcome(key, row, None, REJECTED, planned[row]))
                    continue
                img = np.full((8, 8, 3), int(hashlib.sha256(key.encode()).hexdigest()[:2], 16), np.uint8)
                sink.write(Sample(key, row, f"p{row}", f"prompt {row}", [img], {"seed": row}))
            sink.set_stats(worker=self.name, wall_s=time.perf_counter() - t0)
        faults.hit("after_commit", spec.name)  # as ShardWorker.run: committed, not yet returned
        return sink.stats


def ensure_test_ray():
    """This process connected to the suite's shared Ray (tests/raycluster.py: one head node
    for the session, started on first use), with the test doubles shipped by value."""
    ray = raycluster.connect(raycluster.shared_head().address)
    pickle_fakes_by_value()
    return ray


def pickle_fakes_by_value(*modules) -> None:
    """Actors cannot import test modules: ship FakeWorker and its subclasses (here and in `modules`)
    by value."""
    import ray.cloudpickle

    for module in (sys.modules[__name__], *modules):
        ray.cloudpickle.register_pickle_by_value(module)


class Events:
    """Driver hooks recorder."""

    def __init__(self):
        self.items: list[tuple[str, dict]] = []

    def __call__(self, event: str, payload: dict) -> None:
        self.items.append((event, payload))

    def of(self, name: str) -> list[dict]:
        return [p for e, p in self.items if e == name]


@pytest.fixture
def prompts6(tmp_path) -> Path:
    # 6 rows, 3 shards of 2; row 3 is empty (rejected by the source)
    return write_prompts(tmp_path / "p6.parquet", ["a red fox", "a blue car", "a green tree", "",
                                                    "a cat on a mat", "a yellow boat"])


def no_ray(monkeypatch):
    """Make any Ray start an error: proves a code path never reaches Ray."""
    def boom(*a, **k):
        raise AssertionError("Ray must not be started here")
    monkeypatch.setattr(localray, "connect_ray", boom)


# ================================================================== no Ray
@pytest.mark.parametrize("args,needle", [
    (["sampler.steps=0"], "sampler.steps"),
    (["ray.num_workers=0"], "ray.num_workers"),
    (["output.image_format=gif"], "output.image_format"),
    (["sampler.method=magic"], "sampler.method"),
    (["bogus.key=1"], "bogus"),
    (["--config", "/nonexistent/x.yaml"], "/nonexistent/x.yaml"),
    # refused by the actors' device, found before anything starts
    (["model.dtype=float16"], "model.dtype=float16 runs on CPU here"),
    (["model.dtype=float16", "model.device=cpu", "ray.gpus_per_worker=1"], "model.dtype=float16 runs on CPU"),
    (["model.device=cuda"], "model.device=cuda but ray.gpus_per_worker=0"),
    (["sampler.method=dnp", "captioner.dtype=float16"], "captioner.dtype=float16 runs on CPU"),
    (["sampler.method=dnp", "captioner.dtype=float16", "captioner.workers=1", "ray.gpus_per_worker=1"],
     "captioner.dtype=float16 runs on CPU"),
])
def test_bad_config_exits_2_before_ray(monkeypatch, capsys, tmp_path, args, needle):
    no_ray(monkeypatch)
    rc = generate_main(args + [f"output.path={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and "error" in err
    assert not (tmp_path / "out").exists()


def test_bad_input_exits_2_before_ray(monkeypatch, capsys, tmp_path):
    no_ray(monkeypatch)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "prompt": pa.array([], pa.string())}), empty)
    nocol = write_prompts(tmp_path / "nocol.parquet", ["x"])
    cases = [([f"input.path={tmp_path / 'missing.parquet'}"], "missing.parquet"),
             ([f"input.path={empty}"], "no rows"),
             ([f"input.path={nocol}", "input.prompt_column=text"], "'text'")]
    for args, needle in cases:
        out = tmp_path / "out"
        rc = generate_main(args + [f"output.path={out}"])
        err = capsys.readouterr().err
        assert rc == 2, args
        assert needle in err, err
        assert not (out / "run" / "config.yaml").exists()


def test_local_ray_without_gpus_refuses_gpu_workers(tmp_path, prompts6, monkeypatch):
    """A private local Ray cannot grow: gpus_per_worker > available GPUs fails before any actor."""
    cfg = make_cfg(prompts6, tmp_path / "out", "ray.gpus_per_worker=1")
    rc = RayContext("local", "x", {}, False)
    monkeypatch.setitem(sys.modules, "ray", type(sys)("ray"))
    sys.modules["ray"].cluster_resources = lambda: {"CPU": 2.0}
    with pytest.raises(ConfigError, match="ray.gpus_per_worker=1"):
        check_resources(cfg, rc)


def test_fingerprint_ignores_execution_settings(tmp_path, prompts6):
    base = make_cfg(prompts6, tmp_path / "a")
    same = [make_cfg(prompts6, tmp_path / "b", "ray.num_workers=7", "sampler.batch_size=1",
                     "ray.max_in_flight_per_worker=5", "logging.level=DEBUG", "output.new_run=true",
                     "captioner.workers=3", "model.device=cpu")]
    other = [make_cfg(prompts6, tmp_path / "a", o) for o in
             ("seed=1", "sampler.steps=3", "output.shard_size=3", "sampler.method=answer",
              "output.image_format=jpg", "sampler.guidance_scale=7")]
    fp = fingerprint(base, "sdxl")
    assert all(fingerprint(c, "sdxl") == fp for c in same)
    assert len({fingerprint(c, "sdxl") for c in other} | {fp}) == len(other) + 1
    assert fingerprint(base, "sd1") != fp  # the family the model's files declare is part of the dataset
    assert "ray.num_workers" not in fingerprint_config(base)
    assert "sampler.steps" in fingerprint_config(base)


def run_in_process(cfg, worker_cls: type | None = None) -> None:
    """The job without Ray: its plan (prepare: fingerprint, run/config.yaml) and every planned shard
    through one worker in this process (ShardWorker unless `worker_cls`)."""
    from pipeline.worker import ShardWorker

    p = prepare(cfg)
    w = (worker_cls or ShardWorker)(p.cfg, name="inproc")
    for s in p.specs:
        w.run(s)


def commit_all_in_process(cfg) -> None:
    """Commit every planned shard with FakeWorker, no Ray (a finished run)."""
    run_in_process(cfg, FakeWorker)


def test_finished_output_is_not_sampled_again(tmp_path, prompts6, monkeypatch, capsys):
    out = tmp_path / "out"
    cfg = make_cfg(prompts6, out)
    commit_all_in_process(cfg)
    before = {i: (out / stats_path(i)).stat().st_mtime_ns for i in range(3)}
    no_ray(monkeypatch)
    res = run_job(cfg, worker_cls=FakeWorker)
    assert res.exit_code == 0
    s = res.summary
    assert (s["planned_shards"], s["committed_shards"], s["skipped_shards"], s["new_shards"]) == (3, 3, 3, 0)
    assert s["this_run"]["samples"] == 0
    assert {i: (out / stats_path(i)).stat().st_mtime_ns for i in range(3)} == before
    assert json.loads((out / "run" / "summary.json").read_text())["status"] == "succeeded"
    assert (out / "run" / "config.yaml").exists() and (out / "index.json").exists()
    # the CLI says the same and where the output is
    rc = generate_main(cli_args(prompts6, out))
    printed = capsys.readouterr().out
    assert rc == 0 and f"output: {out}" in printed and "skipped 3" in printed


def test_resume_with_other_config_is_refused_then_new_run_archives(tmp_path, prompts6, monkeypatch, capsys):
    out = tmp_path / "out"
    commit_all_in_process(make_cfg(prompts6, out))
    old_fp = json.loads((out / "run" / "fingerprint.json").read_text())["fingerprint"]
    no_ray(monkeypatch)
    with pytest.raises(RunRefused, match=r"sampler\.steps: 2 -> 3"):
        prepare(make_cfg(prompts6, out, "sampler.steps=3"))
    rc = generate_main([f"input.path={prompts6}", "input.id_column=id", f"output.path={out}", "sampler.steps=3",
                   "output.shard_size=2"])
    assert rc == 2 and "output.new_run=true" in capsys.readouterr().err
    assert committed_shards(open_location(str(out))) == {0, 1, 2}  # nothing touched
    # the same config, spelled with other execution settings, resumes
    prepare(make_cfg(prompts6, out, "ray.num_workers=1", "sampler.batch_size=1"))
    # another input under the same name: refused (plan changed)
    write_prompts(prompts6, ["x"] * 5)
    with pytest.raises(RunRefused, match="shard plan changed"):
        prepare(make_cfg(prompts6, out))
    # new_run moves the old run away and starts over
    p = prepare(make_cfg(prompts6, out, "sampler.steps=3", "output.new_run=true"))
    prev = out / "run" / f"previous-{old_fp[:12]}"
    assert p.archived and Path(p.archived) == prev
    assert committed_shards(open_location(str(out))) == set()
    assert committed_shards(open_location(str(prev))) == {0, 1, 2}
    assert json.loads((out / "run" / "fingerprint.json").read_text())["fingerprint"] != old_fp


def test_output_of_another_pipeline_version_is_refused(tmp_path, prompts6):
    """A run/fingerprint.json of another FINGERPRINT_VERSION: the same config could give other images
    now (e.g. DDIM without clipping), so a resume is refused with that reason."""
    out = tmp_path / "out"
    commit_all_in_process(make_cfg(prompts6, out))
    fp_file = out / "run" / "fingerprint.json"
    stored = json.loads(fp_file.read_text())
    fp_file.write_text(json.dumps({**stored, "version": 1, "fingerprint": "0" * 64}))
    with pytest.raises(RunRefused, match=f"another version of this pipeline .*version 1, this one writes version "
                                         f"{FINGERPRINT_VERSION}"):
        prepare(make_cfg(prompts6, out))


def test_foreign_output_is_refused(tmp_path, prompts6, monkeypatch):
    out = tmp_path / "out"
    commit_all_in_process(make_cfg(prompts6, out))
    (out / "run" / "fingerprint.json").unlink()
    with pytest.raises(RunRefused, match="no run/fingerprint.json"):
        prepare(make_cfg(prompts6, out))


def test_unwritable_output_exits_2(tmp_path, prompts6, monkeypatch, capsys):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        out = blocker / "out"  # a path below a regular file cannot be created, even by root
    else:
        out = tmp_path / "ro" / "out"
        (tmp_path / "ro").mkdir(mode=0o500)
    no_ray(monkeypatch)
    rc = generate_main([f"input.path={prompts6}", f"output.path={out}"])
    assert rc == 2 and "cannot use output.path" in capsys.readouterr().err


# ================================================================== local Ray, FakeWorker
class ChaosWorker(FakeWorker):
    FAIL = {0: {1}, 2: None}  # shard 0: first attempt raises; shard 2: every attempt raises
    DIE = {1: {1}}  # shard 1: the process dies on the first attempt


@pytest.mark.ray
def test_retry_requeue_and_quarantine(ray_local, tmp_path):
    prompts = write_prompts(tmp_path / "p8.parquet", [f"prompt {i}" for i in range(8)])
    out = tmp_path / "out"
    ev = Events()
    res = run_job(make_cfg(prompts, out), worker_cls=ChaosWorker, hooks=ev)
    s = res.summary
    assert res.exit_code == 1 and s["status"] == "quarantined"
    assert s["quarantined_shards"] == [2]
    assert committed_shards(open_location(str(out))) == {0, 1, 3}
    q = json.loads((out / "run" / "quarantine.json").read_text())["shards"]
    assert [r["shard"] for r in q] == [2] and q[0]["failures"] == 2
    # (its errors may also hold an actor death: it can be queued on the actor that shard 1 kills)
    raised = [e for e in q[0]["errors"] if e["kind"] == "exception"]
    assert len(raised) == 2 and all("fake failure of shard 2" in e["error"] for e in raised)
    stats = {i: json.loads((out / stats_path(i)).read_text()) for i in (0, 1, 3)}
    assert stats[0]["attempt"] >= 2  # its first attempt raised (or was lost with the dying actor)
    assert stats[1]["attempt"] >= 2  # requeued after its actor died
    run = s["this_run"]
    failed = [p["shard"] for p in ev.of("failed")]
    assert failed.count(2) == 2 and set(failed) <= {0, 2}  # the death is no failed attempt
    assert run["failed_attempts"] == len(failed)
    assert run["actor_deaths"] == 1 and run["requeues"] >= 1
    assert 1 in {p["shard"] for p in ev.of("requeued")}
    assert {p["shard"] for p in ev.of("actor_died")} == {1}  # blamed: the shard it was running
    assert s["rows"] == 6 and s["samples"] == 6 and s["missing_shards"] == []
    assert set(s["workers"]) == {"sampler-0", "sampler-1"}
    assert sum(w["shards"] for w in s["workers"].values()) == 3
    # a resume retries the quarantined shard (here it still fails) and samples nothing else
    ev2 = Events()
    res2 = run_job(make_cfg(prompts, out, "ray.num_workers=1"), worker_cls=ChaosWorker, hooks=ev2)
    assert res2.exit_code == 1 and {p["shard"] for p in ev2.of("submitted")} == {2}


class HangingWorker(FakeWorker):
    """Shard 1's first attempt never returns (a stuck device, a deadlock): only a timeout ends it."""

    def run(self, spec, attempt=1):
        if spec.shard_id == 1 and attempt == 1:
            while True:
                time.sleep(1)
        return super().run(spec, attempt)


@pytest.mark.ray
@pytest.mark.slow
def test_a_hung_shard_times_out_its_actor_is_replaced_and_the_shard_requeued(ray_local, tmp_path, prompts6):
    """ray.shard_timeout_s: 4 s here, 20x what a FakeWorker shard sleeps (a fresh actor's first shard also pays
    its first imports inside that time, counted from the shard's submission to a ready actor); the hung
    attempt never ends."""
    out = tmp_path / "out"
    ev = Events()
    res = run_job(make_cfg(prompts6, out, "ray.num_workers=1", "ray.shard_timeout_s=4", "ray.max_attempts=3"),
                  worker_cls=HangingWorker, hooks=ev)
    assert res.exit_code == 0, res.summary
    assert [(p["shard"], p["attempt"]) for p in ev.of("timed_out")] == [(1, 1)]
    assert [p["slot"] for p in ev.of("actor_replaced")] == ["sampler-0"]
    assert json.loads((out / stats_path(1)).read_text())["attempt"] == 2
    assert res.summary["this_run"]["failed_attempts"] == 1
    assert res.summary["workers"]["sampler-0"]["replacements"] == 1
    ref = tmp_path / "ref"
    commit_all_in_process(make_cfg(prompts6, ref))
    assert tar_digests(out) == tar_digests(ref)


class HangingFirstCall:
    """A stand-in captioner whose first call never returns (until Ray restarts its actor)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self, images):
        if not os.path.exists(self.marker):  # the first call, across restarts of its actor
            open(self.marker, "w").close()
            while True:
                time.sleep(1)
        return [f"caption of {int(im[0][0][0])}" for im in images]


class SlowCalls:
    """A stand-in captioner that takes `seconds` per call: busy, never hung."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, images):
        time.sleep(self.seconds)
        return [f"caption of {int(im[0][0][0])}" for im in images]


def captioner_actors(*captioners):
    """Captioner actors as start_captioners makes them: a call that reached an actor RemoteCaptioner had
    just killed is retried by Ray on its restart (with max_task_retries=0 it came back ActorDiedError,
    a try spent; on a loaded machine, two of those ran a chunk out of tries: seen once under -n 3)."""
    from pipeline.driver.actors import captioner_actor_class

    cls = captioner_actor_class().options(max_restarts=1, max_task_retries=1, num_cpus=0)
    return [cls.remote(None, captioner=c) for c in captioners]


@pytest.mark.ray
@pytest.mark.slow
def test_a_hung_captioner_actor_is_restarted_and_its_chunk_retried(ray_local, tmp_path):
    from pipeline.driver.actors import RemoteCaptioner

    handles = captioner_actors(HangingFirstCall(str(tmp_path / "a")), HangingFirstCall(str(tmp_path / "b")))
    images = [np.full((4, 4, 3), v, np.uint8) for v in (10, 20, 30)]
    t0 = time.monotonic()
    caps = RemoteCaptioner(handles, batch_size=2, retries=3, timeout_s=1.5)(images)
    assert caps == ["caption of 10", "caption of 20", "caption of 30"]  # input order kept
    assert time.monotonic() - t0 >= 1.5  # it waited for the timeout, then went on
    never = captioner_actors(HangingFirstCall(str(tmp_path / "never")))
    with pytest.raises(TimeoutError, match="captioner.timeout_s"):  # every try silent: a clear error
        RemoteCaptioner(never, batch_size=2, retries=0, timeout_s=1)(images)


@pytest.mark.ray
def test_a_busy_captioner_actor_is_waited_for_not_restarted(ray_local):
    """Five half-second chunks queue on one actor: the last waits ~2.5 s, past captioner.timeout_s = 2 s,
    but the actor's current call never runs 2 s, so nothing is killed."""
    from pipeline.driver.actors import RemoteCaptioner

    (handle,) = captioner_actors(SlowCalls(0.5))
    pid = ray_local.get(handle.describe.remote())["pid"]
    images = [np.full((4, 4, 3), v, np.uint8) for v in range(5)]
    t0 = time.monotonic()
    caps = RemoteCaptioner([handle], batch_size=1, retries=0, timeout_s=2)(images)
    assert caps == [f"caption of {v}" for v in range(5)] and time.monotonic() - t0 >= 2.5
    assert ray_local.get(handle.describe.remote())["pid"] == pid  # the same process: not restarted


class PoisonWorker(FakeWorker):
    DIE = {0: None}  # shard 0 kills its actor every time


@pytest.mark.ray
def test_shard_that_keeps_killing_its_actor_is_quarantined(ray_local, tmp_path):
    prompts = write_prompts(tmp_path / "p4.parquet", [f"prompt {i}" for i in range(4)])
    out = tmp_path / "out"
    res = run_job(make_cfg(prompts, out, "ray.max_actor_restarts=1"), worker_cls=PoisonWorker)
    s = res.summary
    assert res.exit_code == 1 and s["quarantined_shards"] == [0]
    assert committed_shards(open_location(str(out))) == {1}
    q = json.loads((out / "run" / "quarantine.json").read_text())["shards"][0]
    assert q["actor_deaths"] == 2 and q["failures"] == 0
    assert s["this_run"]["failed_attempts"] == 0


class BrokenInitWorker(FakeWorker):
    def __init__(self, cfg, captioner=None, name=""):
        raise RuntimeError("model weights not found: /nowhere")


@pytest.mark.ray
def test_actor_init_failure_stops_the_run(ray_local, tmp_path, prompts6):
    res = run_job(make_cfg(prompts6, tmp_path / "out"), worker_cls=BrokenInitWorker)
    assert res.exit_code == 1 and res.summary["status"] == "failed"
    assert "model weights not found" in res.summary["error"]
    assert res.summary["missing_shards"] == [0, 1, 2]


@pytest.mark.ray
def test_a_queued_shard_moves_to_an_idle_actor_commits_once_and_its_cancelled_attempt_does_not_count(
        ray_local, tmp_path, prompts6, monkeypatch):
    """Shard 0 is held on its actor (fault `wait` after its commit) with a shard queued behind it
    (ray.max_in_flight_per_worker=2); the other actor runs its shard and idles: the queued shard moves
    to it (its queued attempt cancelled) and commits there, once. ray.max_attempts=1: had the cancelled
    attempt counted as a failure, the shard would be quarantined. Released, shard 0 returns."""
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    monkeypatch.setenv("SYNTHGEN_FAULTS", "after_commit:wait:1:000000")
    monkeypatch.setenv("SYNTHGEN_FAULT_DIR", str(fault_dir))
    ev = Events()
    reports_since_idle: list[int] = []

    def hook(event: str, payload: dict) -> None:
        ev(event, payload)
        moved = {p["shard"] for p in ev.of("moved")}
        if event == "committed" and payload["shard"] in moved:
            (fault_dir / "release-after_commit").touch()
        # no move (the behaviour before it existed): release anyway, so that the test fails, not hangs
        if event == "progress" and any(p["shard"] != 0 for p in ev.of("committed")) and not moved:
            reports_since_idle.append(1)
            if len(reports_since_idle) > 10:
                (fault_dir / "release-after_commit").touch()

    out = tmp_path / "out"
    res = run_job(make_cfg(prompts6, out, "ray.max_attempts=1", "ray.max_in_flight_per_worker=2"),
                  worker_cls=FakeWorker, hooks=hook)
    assert res.exit_code == 0, res.summary
    [move] = ev.of("moved")
    shard, idle = move["shard"], move["to"]
    assert shard != 0 and move["attempt"] == 1 and move["slot"] != idle
    held_on = next(p["slot"] for p in ev.of("committed") if p["shard"] == 0)
    assert move["slot"] == held_on  # it waited behind the held shard
    assert [(p["slot"], p["attempt"]) for p in ev.of("submitted") if p["shard"] == shard] == [
        (held_on, 1), (idle, 2)]
    assert [p["slot"] for p in ev.of("committed") if p["shard"] == shard] == [idle]  # committed once, there
    assert json.loads((out / stats_path(shard)).read_text())["attempt"] == 2
    assert res.summary["this_run"]["failed_attempts"] == 0 and res.summary["quarantined_shards"] == []
    assert not ev.of("failed") and not ev.of("requeued")
    assert_complete(out, n_rows=6, n_shards=3)  # (FakeWorker samples the empty row too)


@pytest.mark.ray
def test_resume_reruns_exactly_the_uncommitted_shard(ray_local, tmp_path, prompts6):
    """A finished output whose shard 1 lost its commit file: the job runs exactly that shard again,
    with another worker count, leaves the others untouched and reproduces the same tar. FakeWorker
    actors: this is the driver's resume logic. That the real sampler reproduces a redone shard byte
    for byte is shown on tiny SDXL by the driver-kill test (tests/test_chaos.py), whose second job loses
    its sampler mid-shard."""
    out = tmp_path / "out"
    commit_all_in_process(make_cfg(prompts6, out))  # a finished run
    digests = tar_digests(out)
    (out / stats_path(1)).unlink()
    before = {i: (out / stats_path(i)).stat().st_mtime_ns for i in (0, 2)}
    ev = Events()
    res = run_job(make_cfg(prompts6, out, "ray.num_workers=1"), worker_cls=FakeWorker, hooks=ev)
    assert res.exit_code == 0, res.summary
    assert {p["shard"] for p in ev.of("submitted")} == {1}
    assert res.summary["new_shards"] == 1 and res.summary["skipped_shards"] == 2
    assert {i: (out / stats_path(i)).stat().st_mtime_ns for i in (0, 2)} == before
    assert tar_digests(out) == digests
    assert_complete(out, n_rows=6, n_shards=3)  # FakeWorker samples the empty prompt too


# ================================================================== local Ray, real ShardWorker
def prompt_files(d: Path) -> tuple[Path, Path, dict[str, list[str]]]:
    """A directory of prompt-only files in four formats, and a Hugging Face dataset saved with
    save_to_disk; each holds one empty prompt (a recorded rejection). Returns (dir, dataset, prompts
    by stable file name)."""
    from datasets import Dataset

    files = {"a.parquet": ["a red fox", "", "a blue car"], "b.jsonl": ["a green tree", ""],
             "c.csv": ["a cat, on a mat", ""], "d.tsv": ['a "yellow" boat', ""]}
    (d / "in").mkdir(parents=True)
    pq.write_table(pa.table({"prompt": files["a.parquet"]}), d / "in" / "a.parquet")
    (d / "in" / "b.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in files["b.jsonl"]))
    (d / "in" / "c.csv").write_text('prompt\n"a cat, on a mat"\n""\n')
    (d / "in" / "d.tsv").write_text('prompt\na "yellow" boat\n\n')
    saved = ["an old bridge", "", "a small house"]
    Dataset.from_dict({"prompt": saved}).save_to_disk(str(d / "saved"), num_shards=2)
    names = {"data-00000-of-00002.arrow": saved[:2], "data-00001-of-00002.arrow": saved[2:]}
    return d / "in", d / "saved", {**files, **names}


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_default_config_reads_prompt_only_files_of_every_format(tmp_path, where, request):
    """The default config (no id column: ids are `<file>:<row>`) on a directory of a prompt-only .parquet,
    .jsonl, .csv and .tsv, and on a saved Hugging Face dataset, local or on the S3 server: every input
    row is a sample or a recorded rejection, with the prompt it had. The job's plan and its sampler
    worker (tiny SDXL), in this process: the reading is theirs; Ray only moves shards to actors (the
    Ray tests around this one), and an actor start costs seconds of CPU per run."""
    directory, saved, prompts = prompt_files(tmp_path)
    inputs, extra = [directory, saved], []
    if where == "s3":
        s3, bucket, client = (request.getfixturevalue(f) for f in ("s3_config", "s3_bucket", "s3_client"))
        for f in tmp_path.rglob("*"):
            if f.is_file():
                client.upload_file(str(f), bucket, str(f.relative_to(tmp_path)))
        inputs = [f"s3://{bucket}/in", f"s3://{bucket}/saved"]
        extra = [f"input.s3.{k}={getattr(s3, k)}" for k in ("endpoint_url", "region", "key", "secret")]
    seen: dict[str, str | None] = {}
    for i, inp in enumerate(inputs):
        out = tmp_path / f"out{i}"
        args = [a for a in cli_args(inp, out, "ray.num_workers=1", "sampler.steps=1", *extra)
                if a != "input.id_column=id"]
        cfg = load_config(overrides=args)
        run_in_process(cfg)
        assert committed_shards(open_location(str(out))) == set(range(len(prepare(cfg).specs)))
        for rows in shard_rows(out).values():
            for r in rows:
                assert r["prompt_id"] not in seen
                seen[r["prompt_id"]] = r["status"]
    expected = {f"{name}:{row}": ("ok" if p else REJECTED) for name, ps in prompts.items() for row, p in enumerate(ps)}
    assert seen == expected


@pytest.mark.ray
@pytest.mark.slow
def test_dnp_through_captioner_actors_and_the_progress_of_a_running_shard(ray_local, tmp_path, monkeypatch):
    """DNP with its captioner in a captioner actor (RemoteCaptioner), on tiny SDXL. The shard of 4 rows
    (micro-batches of 2) is held before its second micro-batch (fault `wait`): the driver's progress shows
    its first 2 rows, asked from the running actor, before anything commits; as nothing moves while it is
    held, the run says it is stalled; released, it ends at 4/4. (One job for both: each tiny-model actor
    start imports torch, diffusers and transformers, seconds of CPU on the CI VM.)"""
    prompts = write_prompts(tmp_path / "p4.parquet", ["a red fox", "a blue car", "a green tree", "a cat"])
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    monkeypatch.setenv("SYNTHGEN_FAULTS", "sample:wait:1:000000000002")
    monkeypatch.setenv("SYNTHGEN_FAULT_DIR", str(fault_dir))
    seen: list[tuple[int, int]] = []
    stalls: list[dict] = []
    held: list[int] = []

    def hook(event: str, payload: dict) -> None:
        if event == "stalled":
            stalls.append(payload)
        if event == "progress":
            seen.append((payload["rows_done"], payload["shards_done"]))
            if (fault_dir / "reached-sample").exists():
                held.append(payload["rows_done"])
                # seen mid-shard and reported stalled (or never: fail, not hang)
                if (payload["rows_done"] == 2 and any(x["running"] for x in stalls)) or len(held) > 60:
                    (fault_dir / "release-sample").touch()

    out = tmp_path / "out"
    cfg = make_cfg(prompts, out, "sampler.method=dnp", "captioner.workers=1", "ray.num_workers=1",
                   "output.shard_size=4", "logging.stall_warning_s=2")
    res = run_job(cfg, hooks=hook)
    assert res.exit_code == 0, res.summary
    # DNP: its captions came from the captioner actor
    assert res.summary["workers"]["sampler-0"]["captioner"] == "RemoteCaptioner"
    assert_complete(out, n_rows=4, n_shards=1)
    with tarfile.open(out / tar_path(0)) as tf:
        metas = [json.loads(tf.extractfile(m).read()) for m in tf.getmembers() if m.name.endswith(".json")]
    assert {m["method"] for m in metas} == {"dnp"} and len(metas) == 4
    assert all(isinstance(m["negative_prompt"], str) for m in metas)
    # the images decode
    from PIL import Image

    with tarfile.open(out / tar_path(0)) as tf:
        png = tf.extractfile(f"{sample_key(0, 0)}.png").read()
    assert Image.open(io.BytesIO(png)).size == (32, 32)
    # the progress of the running shard
    assert (2, 0) in seen  # 2 rows counted while no shard had committed
    assert seen[-1] == (4, 1)
    # (a stall may also be reported while the actor loads: none ready, nothing running)
    held_stall = next(x for x in stalls if x["running"])
    assert held_stall["running"] == {"sampler-0": [0]} and held_stall["ready"] == ["sampler-0"]
    assert held_stall["available_gib"] > 0

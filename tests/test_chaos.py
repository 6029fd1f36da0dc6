"""Fault injection: nothing lost, duplicated or half-written, and the images do not change.

Faults come from pipeline.faults (SYNTHGEN_FAULTS, forwarded to the Ray actors by the driver; in
this process the parsed rules are patched). Every case checks the same four things against an
uninterrupted run of the same config (`assert_same_dataset`): the committed set equals the plan
minus reported quarantines, no sample key twice, every input row accounted for (a sample or a
recorded rejection), and every tar byte-identical to the uninterrupted run's.

The sampler killed mid-shard is the second job of the driver-kill test below. Cases covered elsewhere:
shard failing every attempt, poison shard,
resume with a changed config (tests/test_generate.py); out-of-memory split and NaN policy
(tests/test_worker.py); commit races inside the sink (tests/test_sink.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import raycluster
from s3server import FAKE_ENV, FlakyProxy, restartable_moto_s3
from test_generate import (
    Events,
    FakeWorker,
    assert_complete,
    cli_args,
    commit_all_in_process,
    make_cfg,
    pickle_fakes_by_value,
    tar_digests,
    write_prompts,
)

from pipeline import faults
from pipeline.config import load_config
from pipeline.data.layout import committed_shards, read_stats, stats_path, tar_path, write_index
from pipeline.data.sink import AlreadyCommitted, ShardSink
from pipeline.data.source import plan_shards
from pipeline.data.storage import open_location
from pipeline.driver.job import run_job
from pipeline.records import Sample, sample_key

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["a red fox", "a blue car", "a green tree", "", "a cat on a mat", "a yellow boat"]
pytestmark = pytest.mark.chaos


def assert_same_dataset(out: Path, ref: Path, n_rows: int = 6, n_shards: int = 3, rejected=frozenset({3})):
    assert_complete(out, n_rows, n_shards, set(rejected))
    assert tar_digests(out) == tar_digests(ref)
    assert not [p.name for p in (out / "shards").iterdir() if p.name.endswith(".tmp")], "temp files left"


# ================================================================== actor dies around the commit
# The four commit-protocol sites, one shard each, in one job: every actor process start costs
# 30-60 s on the 2-core CI machine, so one job with four faults instead of four jobs.
COMMIT_FAULTS = {  # shard -> (site, action)
    0: ("after_tar", "kill"),  # tar complete locally, nothing published
    1: ("after_upload", "kill"),  # tar and sidecar published, no commit file
    2: ("after_upload", "raise"),  # the same, as an exception: a failed attempt, retried
    3: ("after_commit", "kill"),  # committed, but the driver never hears back
}


@pytest.mark.ray
@pytest.mark.slow
def test_worker_dies_around_the_commit(ray_local, tmp_path, monkeypatch):
    """FakeWorker (no models: its actors need no torch import) writes through the real ShardSink,
    where every one of these fault sites is; the result is compared with the same shards committed
    in this process without faults."""
    prompts = write_prompts(tmp_path / "p8.parquet", [f"prompt {i}" for i in range(8)])
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    monkeypatch.setenv("SYNTHGEN_FAULTS", ",".join(f"{site}:{action}:1:{i:06d}"
                                                   for i, (site, action) in COMMIT_FAULTS.items()))
    monkeypatch.setenv("SYNTHGEN_FAULT_DIR", str(fault_dir))
    out = tmp_path / "out"
    ev = Events()
    # one shard in flight per actor: every kill ends the task the driver waits on, so each death is
    # seen. With a queue, a shard moved at the tail to an idle actor may have started anyway where it
    # was queued (pipeline/driver/executor.py _move_queued) and kill that actor with no task of it
    # left in the driver's sight: nothing is lost, but the death goes uncounted (seen once in a suite).
    res = run_job(make_cfg(prompts, out, "ray.max_actor_restarts=3", "ray.max_in_flight_per_worker=1"),
                  worker_cls=FakeWorker, hooks=ev)
    assert res.exit_code == 0, res.summary
    assert len(list(fault_dir.iterdir())) == 4, "each fault fired once"
    run = res.summary["this_run"]
    assert run["actor_deaths"] == 3 and run["failed_attempts"] == 1
    attempts = {i: read_stats(open_location(str(out)), i).attempt for i in COMMIT_FAULTS}
    # killed or failed before the commit: redone
    assert all(attempts[i] >= 2 for i in (0, 1, 2)), attempts
    # killed after the commit: the commit file is the truth, the driver finds it and does not submit
    # the shard again: the committed attempt is the last one submitted
    assert max(p["attempt"] for p in ev.of("submitted") if p["shard"] == 3) == attempts[3]
    commit_all_in_process(make_cfg(prompts, tmp_path / "ref"))
    assert_same_dataset(out, tmp_path / "ref", n_rows=8, n_shards=4, rejected=())


# ================================================================== two attempts racing
def write_rows(sink: ShardSink, spec) -> None:
    """One 8x8 image per row of `spec`, its pixels from the key (the same in every attempt)."""
    for row in range(spec.row_start, spec.row_stop):
        key = sample_key(spec.shard_id, row - spec.row_start)
        img = np.full((8, 8, 3), int(hashlib.sha256(key.encode()).hexdigest()[:2], 16), np.uint8)
        sink.write(Sample(key, row, f"p{row}", "x", [img], {}))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_racing_attempts_commit_once_and_the_loser_leaves_nothing(tmp_path, where, request):
    """Two attempts of one shard finish at the same moment: one commit, the other raises
    AlreadyCommitted, no temp or partial files, and the committed tar matches its stats."""
    prompts = write_prompts(tmp_path / "p2.parquet", ["a", "b"])
    if where == "s3":
        s3 = request.getfixturevalue("s3_config")
        bucket = request.getfixturevalue("s3_bucket")
        out = f"s3://{bucket}/race"
        extra = [f"output.s3.endpoint_url={s3.endpoint_url}"]
    else:
        out, extra = str(tmp_path / "race"), []
    cfg = make_cfg(prompts, out, *extra)
    loc = open_location(out, cfg.output.s3)
    spec = plan_shards(cfg.input, 2)[0]
    barrier = threading.Barrier(2)
    outcome: dict[int, str] = {}

    def attempt(n: int) -> None:
        try:
            with ShardSink(loc, spec, attempt=n) as sink:
                write_rows(sink, spec)
                barrier.wait(timeout=30)  # both attempts reach the commit together
            outcome[n] = "committed"
        except AlreadyCommitted:
            outcome[n] = "lost"

    threads = [threading.Thread(target=attempt, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcome.values()) == ["committed", "lost"]
    winner = next(n for n, o in outcome.items() if o == "committed")
    stats = read_stats(loc, 0)
    assert stats.attempt == winner
    assert hashlib.sha256(loc.read_bytes(tar_path(0))).hexdigest() == stats.tar_sha256
    assert sorted(loc.listdir("shards")) == ["000000.parquet", "000000.stats.json", "000000.tar"]


def test_an_attempt_held_past_its_commit_check_loses_cleanly_when_the_other_commits(tmp_path, monkeypatch):
    """The narrowest race, made deterministic: attempt 1 has found the shard uncommitted and is held
    just before it publishes (fault `wait` at before_publish); attempt 2 then commits and removes the
    temp files it takes for leftovers, attempt 1's among them. Released, attempt 1 raises
    AlreadyCommitted (it used to fail with FileNotFoundError on its vanished temp file), and the
    output holds exactly the committed shard."""
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    monkeypatch.setattr(faults, "_RULES", faults._parse("before_publish:wait:1"))  # in this process
    monkeypatch.setenv("SYNTHGEN_FAULT_DIR", str(fault_dir))
    prompts = write_prompts(tmp_path / "p2.parquet", ["a", "b"])
    out = str(tmp_path / "race")
    cfg = make_cfg(prompts, out)
    loc = open_location(out, cfg.output.s3)
    spec = plan_shards(cfg.input, 2)[0]
    outcome: dict[int, str] = {}

    def attempt(n: int) -> None:
        try:
            with ShardSink(loc, spec, attempt=n) as sink:
                write_rows(sink, spec)
            outcome[n] = "committed"
        except AlreadyCommitted:
            outcome[n] = "lost"
        except Exception as e:  # noqa: BLE001 - recorded: the test says what it was
            outcome[n] = f"{type(e).__name__}: {e}"

    first = threading.Thread(target=attempt, args=(1,))
    first.start()
    deadline = time.monotonic() + 60
    while not (fault_dir / "reached-before_publish").exists():
        assert time.monotonic() < deadline and first.is_alive(), outcome
        time.sleep(0.02)
    attempt(2)  # the fault fired once: attempt 2 passes the same point and commits
    (fault_dir / "release-before_publish").touch()
    first.join(timeout=60)
    assert outcome == {1: "lost", 2: "committed"}
    assert read_stats(loc, 0).attempt == 2
    assert sorted(loc.listdir("shards")) == ["000000.parquet", "000000.stats.json", "000000.tar"]


# ================================================================== a node is lost
class HeldOnNodeWorker(FakeWorker):
    """FakeWorker that never finishes a shard on the node HOLD_NODE (set before the run; the class
    travels to the actors by value): its shard is in flight when the node goes, on any machine."""

    HOLD_NODE: str | None = None

    def run(self, spec, attempt=1):
        import ray

        if ray.get_runtime_context().get_node_id() == self.HOLD_NODE:
            while True:
                time.sleep(1)
        return super().run(spec, attempt)


@pytest.mark.ray
@pytest.mark.slow
def test_node_lost_mid_run(node_cluster, tmp_path):
    """A worker node disappears while its actor holds a shard and another node joins: the shard is
    requeued, the job completes, the shards equal an undisturbed run's."""
    cluster = node_cluster
    doomed = cluster.worker_nodes.copy().pop()
    HeldOnNodeWorker.HOLD_NODE = doomed.node_id
    pickle_fakes_by_value(sys.modules[__name__])  # HeldOnNodeWorker lives here
    prompts = write_prompts(tmp_path / "p8.parquet", [f"prompt {i}" for i in range(8)])
    node_of: dict[str, str] = {}  # slot -> node id, from the actors' describe()
    submitted: set[str] = set()  # slots that have been given a shard
    removed, added = [], []

    def hooks(event: str, payload: dict) -> None:  # called in this (the driver's main) thread
        if event == "actor_ready":
            node_of[payload["slot"]] = payload["info"].get("node_id")
        if event == "submitted":
            submitted.add(payload["slot"])
        # the actor on the doomed node holds a shard (submitted before or after it reported ready):
        # take the node away, then a new node joins, mid-run (Ray's Node registers signal handlers,
        # which only the main thread may do); the cluster has two nodes again afterwards
        if not removed and {s for s, n in node_of.items() if n == doomed.node_id} & submitted:
            cluster.remove_node(doomed)
            removed.append(doomed.node_id)
            added.append(raycluster.add_node(cluster))

    res = run_job(make_cfg(prompts, tmp_path / "out", "ray.max_actor_restarts=1"),
                  worker_cls=HeldOnNodeWorker, hooks=hooks)
    assert removed, "an actor was placed on the doomed node"
    assert added and added[0].node_id != doomed.node_id, "a new node joined mid-run"
    assert res.exit_code == 0, res.summary
    assert res.summary["this_run"]["actor_deaths"] >= 1 and res.summary["this_run"]["requeues"] >= 1
    # the undisturbed run, same shards: FakeWorker in this process (no second cluster run)
    commit_all_in_process(make_cfg(prompts, tmp_path / "ref"))
    assert_same_dataset(tmp_path / "out", tmp_path / "ref", n_rows=8, n_shards=4, rejected=())


# ================================================================== the driver is killed
def job_driver_pids(out: Path) -> list[int]:
    """The processes of the submitted job's driver (Ray runs the entrypoint through a shell), found
    by its command line: jobs/generate.py writing to `out`."""
    pids = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if "jobs/generate.py" in cmd and f"output.path={out}" in cmd:
            pids.append(int(d.name))
    return pids


@pytest.mark.ray
@pytest.mark.slow
def test_driver_killed_then_same_command_again(ray_head, reference_prompts, request, tmp_path, synthgen_cache):
    """The command users run: `ray job submit --working-dir . --runtime-env <infra/runtime_env.yaml>
    -- python jobs/generate.py ...` against a head on 127.0.0.1 (the suite's shared head: the Node
    that `ray start --head` runs, without its Ray Client server, see tests/raycluster.py). One sampler
    actor (the real job, tiny SDXL) runs the shards in order; shard 1 is held at its first batch (fault
    `wait`), so when the test SIGKILLs the job's driver, shard 0 is committed and shards 1 and 2 are
    not, on any machine (its actors die with its Ray job). The same submission again finishes the job,
    SUCCEEDED, without redoing shard 0, and the dataset is byte-identical to the uninterrupted in-process
    run, although its sampler actor dies inside the sampling loop of shard 2 (fault `kill`): Ray restarts
    it and the shard is requeued. (One job run for both faults: each tiny-SDXL actor start imports torch,
    diffusers and transformers, seconds of CPU on the CI VM.)"""
    import yaml
    from ray.job_submission import JobStatus, JobSubmissionClient

    prompts = reference_prompts
    out = tmp_path / "out"  # absolute: the job's working dir is a temporary copy
    faults_dir = tmp_path / "faults"
    faults_dir.mkdir()
    # infra/runtime_env.yaml plus what this test hands the job: the tiny-model cache, the fault
    runtime_env = yaml.safe_load((REPO / "infra" / "runtime_env.yaml").read_text())
    # the keys of shards 1 and 2, row 0 (a bare "000001" would also match row 1 of any shard); the first
    # job never reaches shard 2, the second finds the wait used up
    runtime_env["env_vars"].update({"SYNTHGEN_CACHE": str(synthgen_cache), "SYNTHGEN_FAULT_DIR": str(faults_dir),
                                    "SYNTHGEN_FAULTS": "sample:wait:1:000001000000,sample:kill:1:000002000000"})
    env_file = tmp_path / "runtime_env.yaml"
    env_file.write_text(yaml.safe_dump(runtime_env))
    client = JobSubmissionClient(ray_head.dashboard)
    env = {**os.environ, **raycluster.LOOPBACK_ENV}
    env.pop("RAY_ADDRESS", None)
    job_args = [a for a in cli_args(prompts, out) if not a.startswith("ray.address=")]
    submit = [*raycluster.ray_cli(), "job", "submit", "--address", ray_head.dashboard,
              "--working-dir", ".", "--runtime-env", str(env_file)]
    entry = ["--", sys.executable, "jobs/generate.py", *job_args, "ray.num_workers=1", "ray.address=auto"]

    first = f"synthgen-test-{uuid.uuid4().hex[:8]}"
    r = subprocess.run([*submit, "--submission-id", first, "--no-wait", *entry], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ref_out = request.getfixturevalue("reference")  # made here while Ray starts the job's processes
    while not (faults_dir / "reached-sample").exists():  # shard 1 is held: shard 0 has committed
        status = client.get_job_status(first)
        assert not status.is_terminal(), f"{status}: {client.get_job_logs(first)[-4000:]}"
        time.sleep(0.2)
    assert committed_shards(open_location(str(out))) == {0}
    pids = job_driver_pids(out)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert pids, "the job's driver process was found"
    while not client.get_job_status(first).is_terminal():  # the supervisor sees its driver die
        time.sleep(0.5)
    assert client.get_job_status(first) == JobStatus.FAILED
    assert committed_shards(open_location(str(out))) == {0}  # shard 1 was held, shard 2 never started
    before = (out / stats_path(0)).stat().st_mtime_ns

    again = f"synthgen-test-{uuid.uuid4().hex[:8]}"
    # `--no-wait` and the job's status polled here: a waiting `ray job submit` returns ~3 s after its job
    # ended (Ray's log tail polls once a second); that it exits 0 with the job's output is test_cluster_auth's
    r = subprocess.run([*submit, "--submission-id", again, "--no-wait", *entry], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    deadline = time.monotonic() + 600  # as long as the waiting command was given
    while not client.get_job_status(again).is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(again)
            pytest.fail(f"the second job did not end in 600 s: {client.get_job_logs(again)[-4000:]}")
        time.sleep(0.2)
    logs = client.get_job_logs(again)
    assert client.get_job_status(again) == JobStatus.SUCCEEDED, logs[-6000:]
    assert f"output: {out}" in logs  # the driver says where the output is
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["ray"]["mode"] == "cluster"  # joined the head
    assert summary["skipped_shards"] == 1 and summary["new_shards"] == 2
    assert (out / stats_path(0)).stat().st_mtime_ns == before
    assert_same_dataset(out, ref_out)
    # the sampler killed mid-shard in the second job: restarted by Ray, its shard requeued and redone
    assert (faults_dir / "1-sample-0").exists(), "the kill fired"
    assert summary["this_run"]["actor_deaths"] == 1 and summary["this_run"]["requeues"] == 1
    assert "died while running shard 000002" in logs and "requeueing its shards" in logs, logs[-4000:]
    assert read_stats(open_location(str(out)), 2).attempt == 2
    assert (summary["planned_shards"], summary["committed_shards"]) == (3, 3)
    assert (summary["rows"], summary["samples"], summary["rejected"], summary["failed"]) == (6, 5, 1, 0)
    assert {w["device"] for w in summary["workers"].values()} == {"cpu"}
    this_run = sum(read_stats(open_location(str(ref_out)), i).samples for i in (1, 2))
    assert sum(w["samples"] for w in summary["workers"].values()) == summary["this_run"]["samples"] == this_run
    assert "steps: 2" in (out / "run" / "config.yaml").read_text()
    with tarfile.open(out / tar_path(0)) as tf:
        meta = json.loads(tf.extractfile(f"{sample_key(0, 0)}.json").read())
    assert meta["prompt"] == "a red fox" and meta["steps"] == 2 and meta["method"] == "cfg"
    # the run wrote its dataset card with its own figures
    from PIL import Image

    assert summary["card"] == str(out / "README.md")
    card = (out / "README.md").read_text()
    assert f"| Samples | {summary['samples']} |" in card and f"| Rejected rows | {summary['rejected']} |" in card
    assert f"| Wall time (s) | {summary['wall_s']:.1f}" in card and "succeeded (exit 0)" in card
    with Image.open(out / "card" / "contact_sheet.png") as sheet:
        assert sheet.width > 5 * 32 and sheet.height > 32


# ================================================================== S3 throttling and outage
def test_s3_throttling_resets_and_outage(tmp_path, tiny_cache, monkeypatch):
    """Input and output on S3 behind a proxy that throttles (503 SlowDown) and drops connections;
    the server is stopped between two shards and started again 2 s later on the same port. The
    worker waits it out (pipeline.data.storage.RetryingFS): every shard committed once, identical to a
    local run, no pending multipart upload."""
    import boto3

    from pipeline.worker import ShardWorker

    for k, v in FAKE_ENV.items():
        monkeypatch.setenv(k, v)
    local_in = write_prompts(tmp_path / "p6.parquet", PROMPTS)
    base = ["input.id_column=id", "output.shard_size=2", "sampler.steps=2", "sampler.height=32",
            "sampler.width=32", "sampler.batch_size=2"]
    ref_cfg = load_config([], [f"input.path={local_in}", f"output.path={tmp_path / 'ref'}", *base])
    worker = ShardWorker(ref_cfg)
    for spec in plan_shards(ref_cfg.input, 2):
        worker.run(spec)
    # about 60 requests: 4 throttled, 3 reset (each one costs the client a backoff of up to seconds)
    with restartable_moto_s3() as server, FlakyProxy(server.url, throttle_every=13, reset_every=17) as proxy:
        s3 = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")
        s3.create_bucket(Bucket="chaos")
        s3.upload_file(str(local_in), "chaos", "in/p6.parquet")
        ep = [f"{side}.s3.{k}={v}" for side in ("input", "output")
              for k, v in (("endpoint_url", proxy.url), ("retry_timeout_s", 120))]
        cfg = load_config([], ["input.path=s3://chaos/in/p6.parquet", "output.path=s3://chaos/out", *base, *ep])
        w = ShardWorker(cfg, model=worker.model)
        specs = plan_shards(cfg.input, 2)
        w.run(specs[0])
        server.stop()  # a full outage, starting before the next shard
        restart = threading.Timer(2.0, server.start)
        restart.start()
        t0 = time.monotonic()
        for spec in specs[1:]:
            w.run(spec)
        restart.join()
        waited = time.monotonic() - t0
        assert waited >= 1.8, "the second shard had to wait for the server"
        assert proxy.throttled and proxy.resets and proxy.refused, (proxy.throttled, proxy.resets, proxy.refused)
        loc = open_location("s3://chaos/out", cfg.output.s3)
        assert committed_shards(loc) == {0, 1, 2}
        for i in range(3):  # identical to the local run, committed once
            assert loc.read_bytes(tar_path(i)) == (tmp_path / "ref" / tar_path(i)).read_bytes()
            assert read_stats(loc, i).attempt == 1
        assert s3.list_multipart_uploads(Bucket="chaos").get("Uploads", []) == []
        names = [o["Key"] for o in s3.list_objects_v2(Bucket="chaos", Prefix="out/")["Contents"]]
        assert len(names) == len(set(names)) == 9 and not [n for n in names if n.endswith(".tmp")]


# ================================================================== one scorer fails on one image
def test_scorer_failing_on_one_image_keeps_the_sample(tmp_path, tiny_cache, monkeypatch):
    from pipeline.worker import ShardWorker

    monkeypatch.setattr(faults, "_RULES", faults._parse("score:raise::a blue car"))
    prompts = write_prompts(tmp_path / "p6.parquet", PROMPTS)
    args = [f"input.path={prompts}", "input.id_column=id", "output.shard_size=2", "sampler.steps=2",
            "sampler.height=32", "sampler.width=32", "sampler.batch_size=2",
            "scoring.scorers=[clip,aesthetic]"]
    out = tmp_path / "out"
    cfg = load_config([], [*args, f"output.path={out}"])
    w = ShardWorker(cfg)
    for spec in plan_shards(cfg.input, 2):
        w.run(spec)
    monkeypatch.setattr(faults, "_RULES", ())
    ref = tmp_path / "ref"
    w2 = ShardWorker(load_config([], [*args, f"output.path={ref}"]), model=w.model, scorers=w.scorers)
    for spec in plan_shards(cfg.input, 2):
        w2.run(spec)
    metas = {}
    for i in range(3):
        with tarfile.open(out / tar_path(i)) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    metas[m.name[:-5]] = json.loads(tf.extractfile(m).read())
    hit = [k for k, m in metas.items() if m["prompt"] == "a blue car"]
    assert len(hit) == 1
    m = metas[hit[0]]
    assert m["scores"] == {"clip": None, "aesthetic": None}
    assert set(m["score_errors"]) == {"clip", "aesthetic"} and "injected fault" in m["score_errors"]["clip"]
    others = [mm for k, mm in metas.items() if k not in hit]
    assert len(others) == 4 and all(isinstance(v, float) for mm in others for v in mm["scores"].values())
    write_index(open_location(str(out)))  # what run_job does last; assert_complete reads it
    assert_complete(out, 6, 3, {3})
    # the images themselves are those of the undisturbed run
    for i in range(3):
        with tarfile.open(out / tar_path(i)) as a, tarfile.open(ref / tar_path(i)) as b:
            pa = {x.name: a.extractfile(x).read() for x in a.getmembers() if x.name.endswith(".png")}
            pb = {x.name: b.extractfile(x).read() for x in b.getmembers() if x.name.endswith(".png")}
            assert pa == pb

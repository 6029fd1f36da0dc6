#!/usr/bin/env python
"""The Ray job: prompts in, committed WebDataset shards out.

    python jobs/generate.py [--config FILE ...] [dotted.key=value ...]
    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env infra/runtime_env.yaml \\
        -- python jobs/generate.py --config configs/sdxl.yaml input.path=s3://... output.path=s3://...

With no arguments it runs configs/default.yaml (tiny model, demo prompts) on a local Ray and prints
where the output is. Steps: config -> plan shards -> resume check -> run/config.yaml -> Ray ->
sampler actors (+ captioner actors) -> bounded dispatch with retries -> index.json + run/summary.json.

Exit codes: 0 every planned shard is committed; 1 a shard was quarantined or the run failed;
2 the config, the input or the output location cannot be used (nothing was started); 130 interrupted.

Ray: under `ray job submit` (RAY_ADDRESS is set) or with `ray.address=<addr>` it connects to that
cluster; with no address it joins a running local cluster if `ray.init(address="auto")` finds one,
else starts a private local Ray (ray.local_num_cpus or all CPUs, no dashboard, 127.0.0.1).
`ray.address=local` always starts a private one. Code reaches the actors through the job's working
dir (ray job submit) or, when this script connects, a job-level `py_modules` entry holding the
`pipeline` package; a caller that initialised Ray itself provides the code its own way.
Local paths in the config are made absolute before they are handed to actors; a multi-node
cluster needs s3:// (or a shared filesystem) for input.path and output.path.

Resume. `run/fingerprint.json` holds a sha256 over the config keys that define the dataset, plus a
digest of the shard plan (file names relative to the input root, row ranges). A run into an
output with another fingerprint or plan is refused (exit 2, the differing keys are listed) unless
`output.new_run=true`, which moves the old run to `run/previous-<fingerprint>/` and starts over;
with a matching fingerprint new_run changes nothing (the shards would come out identical). Keys that
do not change the dataset are left out of the fingerprint (FINGERPRINT_EXCLUDE): where the output
goes, credentials and endpoints, Ray resources, logging, and execution choices that change images
by float rounding at most: batch sizes, device, attention kernel, compile, channels_last. Samples
are seeded per sample, never per batch or worker, so a resume may use another batch size or
worker count. Committed shards are skipped; a finished output is not sampled again.

Failures. Each actor has at most ray.max_in_flight_per_worker shards queued. A shard whose task
raised counts a failed attempt and goes to the back of the queue; after ray.max_attempts failed
attempts it is quarantined (run/quarantine.json, with the errors) and the rest of the job goes on.
When an actor dies (RayActorError) its shards are requeued at the front without counting a failed
attempt; Ray restarts the actor (ray.max_actor_restarts), and a slot whose restarts are used up
gets a fresh actor (at most ray.num_workers replacements per run). Only the shard the actor was
running when it died is blamed: a shard that was running during ray.max_attempts actor deaths is
quarantined as poison (e.g. it makes the process run out of host memory). Before any retry the
driver checks the shard's commit file, so a shard that committed just before its actor died is
not sampled twice. Actors that fail in __init__ are not restarted or replaced; when none is left
the run stops with that error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import posixpath
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pipeline.config import Config, ConfigError, load_config, to_dict, to_yaml  # noqa: E402
from pipeline.records import ShardSpec, ShardStats  # noqa: E402
from pipeline.data.sink import committed_shards, read_stats, stats_path, write_index  # noqa: E402
from pipeline.data.source import InputError, plan_shards  # noqa: E402
from pipeline.data.storage import Location, is_s3, open_location  # noqa: E402

log = logging.getLogger("synthgen.generate")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
RUN = "run"
CONFIG_FILE, FINGERPRINT_FILE = f"{RUN}/config.yaml", f"{RUN}/fingerprint.json"
SUMMARY_FILE, QUARANTINE_FILE = f"{RUN}/summary.json", f"{RUN}/quarantine.json"
FINGERPRINT_VERSION = 1
# Dotted keys (or whole sections) that do not change what the dataset contains; see the docstring.
FINGERPRINT_EXCLUDE = (
    "ray", "logging", "output.path", "output.new_run", "output.s3", "input.s3",
    "model.device", "model.cache_dir", "model.compile", "model.channels_last", "model.attention",
    "sampler.batch_size", "sampler.min_batch_size",
    "captioner.workers", "captioner.gpus_per_worker", "captioner.batch_size", "scoring.batch_size",
)
# Environment handed to every actor: the tiny-model cache and the fault-injection switches.
FORWARD_ENV_PREFIX = "SYNTHGEN_"
ERROR_CHARS = 4000
PROBE_BACKOFF_MAX_S = 10.0  # re-probe interval cap for a restarting actor
ACTOR_UNAVAILABLE_LIMIT_S = 900.0  # an actor unreachable this long is replaced


class RunRefused(Exception):
    """The output location cannot be used as asked (another run's output, unwritable); exit 2."""


# ================================================================== config, paths, fingerprint
def parse_args(argv: list[str] | None) -> tuple[list[str], list[str]]:
    ap = argparse.ArgumentParser(
        prog="jobs/generate.py", description="Generate a synthetic image dataset on Ray.",
        epilog="Overrides are dotted config keys, e.g. sampler.method=answer output.path=s3://b/out")
    ap.add_argument("--config", action="append", default=[], metavar="FILE",
                    help="YAML merged over configs/default.yaml, in order (repeatable)")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    ns = ap.parse_args(argv)
    return ns.config, ns.overrides


def _local_abs(path: str | None, must_exist: bool = True) -> str | None:
    """An absolute path for a local path (actors may run in another directory); others unchanged."""
    if (not path or path == "tiny" or is_s3(path) or os.path.isabs(path)
            or (must_exist and not os.path.exists(path))):
        return path
    return os.path.abspath(os.path.expanduser(path))


def resolve_paths(cfg: Config) -> Config:
    """The config handed to actors: local input/output/model paths made absolute."""
    sc = cfg.scoring
    return replace(
        cfg,
        input=replace(cfg.input, path=_local_abs(cfg.input.path, must_exist=False)),
        output=replace(cfg.output, path=_local_abs(cfg.output.path, must_exist=False)),
        model=replace(cfg.model, id=_local_abs(cfg.model.id), vae_id=_local_abs(cfg.model.vae_id),
                      cache_dir=_local_abs(cfg.model.cache_dir, must_exist=False)),
        captioner=replace(cfg.captioner, id=_local_abs(cfg.captioner.id)),
        scoring=replace(sc, clip_id=_local_abs(sc.clip_id), pickscore_id=_local_abs(sc.pickscore_id),
                        pickscore_processor_id=_local_abs(sc.pickscore_processor_id),
                        aesthetic_head=_local_abs(sc.aesthetic_head)),
    )


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: d}


def fingerprint_config(cfg: Config) -> dict[str, Any]:
    """The keys of the config (as given) that define the dataset, flattened and sorted."""
    flat = _flatten(to_dict(cfg, redact=True))
    return {k: v for k, v in sorted(flat.items())
            if not any(k == x or k.startswith(x + ".") for x in FINGERPRINT_EXCLUDE)}


def fingerprint(cfg: Config) -> str:
    body = json.dumps({"v": FINGERPRINT_VERSION, "config": fingerprint_config(cfg)}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def plan_digest(specs: list[ShardSpec]) -> str:
    """The plan without where the input happens to be mounted: relative file names and row ranges."""
    paths = [s.path.split("://", 1)[-1] for s in specs]
    files = sorted(set(paths))
    root = posixpath.dirname(files[0]) if len(files) == 1 else posixpath.commonpath(files)
    rows = [[posixpath.relpath(p, root), s.shard_id, s.row_start, s.row_stop,
             [list(r) for r in s.planned_rejections]] for p, s in zip(paths, specs)]
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode("utf-8")).hexdigest()


# ================================================================== prepare: everything before Ray
@dataclass
class Prepared:
    cfg: Config  # for actors: paths resolved
    location: Location
    specs: list[ShardSpec]
    committed_before: set[int]
    fingerprint: str
    archived: str | None = None  # where new_run moved a previous run


def prepare(given: Config) -> Prepared:
    """Plan, check the output, save run/config.yaml. Raises InputError/ConfigError/RunRefused."""
    cfg = resolve_paths(given)
    specs = plan_shards(cfg.input, cfg.output.shard_size)
    try:
        loc = open_location(cfg.output.path, cfg.output.s3)
    except ValueError as e:
        raise ConfigError(f"output.path={given.output.path!r}: {e}") from None
    fp, digest = fingerprint(given), plan_digest(specs)
    archived = None
    try:
        archived = _check_resume(loc, given, fp, digest)
        if archived is not None or not loc.exists(FINGERPRINT_FILE):
            record = {"fingerprint": fp, "plan_digest": digest, "planned_shards": len(specs),
                      "rows": sum(s.num_rows for s in specs), "version": FINGERPRINT_VERSION,
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "excluded": list(FINGERPRINT_EXCLUDE), "config": fingerprint_config(given)}
            loc.write_text_atomic(FINGERPRINT_FILE, json.dumps(record, indent=1, sort_keys=True, default=str))
        loc.write_text_atomic(CONFIG_FILE, to_yaml(cfg, redact=True))
        planned = {s.shard_id for s in specs}
        committed = committed_shards(loc)
    except OSError as e:  # unwritable directory, missing bucket, bad credentials
        raise RunRefused(f"cannot use output.path={loc.url}: {type(e).__name__}: {e}") from e
    stray = committed - planned
    if stray:
        log.warning("%d committed shard(s) are not in the plan (e.g. %s); they stay in index.json",
                    len(stray), sorted(stray)[:5])
    return Prepared(cfg, loc, specs, committed & planned, fp, archived)


def _check_resume(loc: Location, given: Config, fp: str, digest: str) -> str | None:
    """None to go on (fresh or resume); the archive folder when new_run moved an old run away."""
    stored = json.loads(loc.read_text(FINGERPRINT_FILE)) if loc.exists(FINGERPRINT_FILE) else None
    if stored is None:
        found = loc.listdir("")
        if not found:
            return None
        problem = ("holds committed shards but no run/fingerprint.json (not written by this job, or damaged)"
                   if committed_shards(loc) else
                   f"is not empty and was not written by this job (found {', '.join(found[:5])}"
                   f"{', ...' if len(found) > 5 else ''})")
        tag = "unknown"
    elif stored.get("fingerprint") == fp and stored.get("plan_digest") == digest:
        return None
    else:
        tag = str(stored.get("fingerprint", "unknown"))[:12]
        if stored.get("fingerprint") != fp:
            old, new = stored.get("config", {}), fingerprint_config(given)
            diffs = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
                     for k in sorted(set(old) | set(new)) if old.get(k, "<unset>") != new.get(k, "<unset>")]
            problem = ("was written with a different config (" + "; ".join(diffs[:10])
                       + (f"; ... {len(diffs) - 10} more" if len(diffs) > 10 else "") + ")")
        else:
            problem = ("was written from different input data (the shard plan changed: files, row "
                       "counts or duplicate ids under input.path)")
    if not given.output.new_run:
        raise RunRefused(
            f"output.path={loc.url} {problem}. Resume with the same config and input, choose another "
            f"output.path, or set output.new_run=true to start a new run there (the previous run moves "
            f"to {RUN}/previous-{tag}/).")
    dest = f"{RUN}/previous-{tag}"
    if loc.exists(dest):
        dest = f"{dest}-{int(time.time())}"
    if not loc.s3:
        os.makedirs(loc.join(dest), exist_ok=True)
    for rel in ("shards", "index.json", "README.md", CONFIG_FILE, FINGERPRINT_FILE, SUMMARY_FILE,
                QUARANTINE_FILE):
        if loc.exists(rel):
            loc.fs.mv(loc.join(rel), loc.join(dest, posixpath.basename(rel)), recursive=True)
    log.warning("output.new_run=true: the previous run in %s %s; moved it to %s", loc.url, problem,
                loc.uri(dest))
    return loc.uri(dest)


# ================================================================== Ray
@dataclass
class RayContext:
    mode: str  # local (started here) | cluster | existing (already initialised by the caller)
    address: str
    runtime_env: dict[str, Any]  # per actor: forwarded env vars
    started_here: bool


def _needs_captioner(cfg: Config) -> bool:
    """Same rule as pipeline.worker.needs_captioner, without importing torch in the driver."""
    methods = set(cfg.preference.methods) | {cfg.sampler.method}
    return bool(methods & {"dnp", "cnp"}) and cfg.sampler.dnp.mode != "human"


def connect_ray(cfg: Config) -> RayContext:
    import ray

    started = False
    # Code for the actors: a submitted job ships its working dir; otherwise the `pipeline` package
    # goes to the cluster as a job-level py_modules entry (Ray only uploads local dirs at job level).
    submitted = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
    job_env = {} if submitted else {"py_modules": [str(REPO_ROOT / "pipeline")]}
    if ray.is_initialized():  # the caller connected (tests, notebooks): its runtime env stands
        mode = "existing"
    else:
        addr = cfg.ray.address
        if addr != "local" and (os.environ.get("RAY_ADDRESS") or addr):
            ray.init(address=None if os.environ.get("RAY_ADDRESS") else addr, runtime_env=job_env or None)
            mode = "cluster"
        else:
            mode = "local"
            if addr is None and _running_local_cluster():  # join a `ray start --head` on this machine
                try:
                    ray.init(address="auto", runtime_env=job_env or None)
                    mode = "cluster"
                except ConnectionError:
                    pass
            if mode == "local":
                start_local_ray(num_cpus=cfg.ray.local_num_cpus or os.cpu_count(), runtime_env=job_env or None)
                started = True
    # Per actor: the tiny-model cache and fault-injection switches of this driver (merged by Ray
    # with the job's runtime env).
    env_vars = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV_PREFIX)}
    runtime_env: dict[str, Any] = {"env_vars": env_vars} if env_vars else {}
    address = ray.get_runtime_context().gcs_address
    log.info("ray: %s (%s); resources %s", mode, address, _resources(ray.cluster_resources()))
    return RayContext(mode, address, runtime_env, started)


def start_local_ray(attempts: int = 4, **init_kwargs: Any) -> None:
    """ray.init a private single-node Ray on 127.0.0.1 (no dashboard), retrying a failed start.

    The raylet gives its dashboard agent a fixed ~15 s per port file and aborts when the agent is
    slower; on a saturated machine (measured on a 2-core CI VM: the agent took 41 s to import) the
    start fails with "The current node timed out during startup". A failed ray.init leaves its GCS,
    monitor, dashboard and log monitor running (they burned ~0.5 core per failed attempt and made the
    next start fail too), so they are killed before the next attempt.
    """
    import ray

    for attempt in range(1, attempts + 1):
        before = descendants()
        try:
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", **init_kwargs)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises plain Exception for a failed node start
            ray.shutdown()
            kill_descendants(exclude=before)  # also after the last attempt: nothing is left running
            if attempt == attempts:
                raise
            log.warning("local Ray did not start (attempt %d of %d): %s; retrying", attempt, attempts,
                        _last_line(str(e)))
            time.sleep(5 * attempt)  # let what the failed start was waiting for settle
            _read_package_files(ray)


def _read_package_files(package: Any) -> None:
    """Read a package's code files once, so the processes about to start import from the page cache.
    Measured on the CI VM: `import ray` took 25 s cold and 3.8 s right after a first import; the
    node start fails when the dashboard agent's imports are that slow."""
    root = Path(package.__file__).parent
    for path in root.rglob("*"):
        if path.suffix in (".py", ".so") and path.is_file():
            try:
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass
            except OSError:
                pass


def descendants(pid: int | None = None) -> set[int]:
    """Process ids below `pid` (default: this process), from /proc; empty where there is no /proc."""
    parent_of: dict[int, int] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:  # the command name in field 2 may hold spaces and parentheses: split after the last ")"
            parent_of[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = set(), {pid or os.getpid()}
    while frontier:
        frontier = {c for c, p in parent_of.items() if p in frontier} - found
        found |= frontier
    return found


def kill_descendants(exclude: set[int] = frozenset()) -> None:
    """SIGKILL this process's descendants except `exclude` (what a failed Ray start left running)."""
    import signal

    doomed = descendants() - exclude
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while doomed and time.monotonic() < deadline:  # gone or a zombie: it holds no port or CPU
        doomed = {pid for pid in doomed if _alive(pid)}
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _running_local_cluster() -> bool:
    """A Ray GCS process runs on this machine. Checked first because ray.init(address="auto") retries
    a stale /tmp/ray/ray_current_cluster (left by a cluster that did not stop cleanly) for minutes."""
    try:
        from ray._private.services import find_gcs_addresses  # private: fall back to trying if it moves
    except ImportError:
        return True
    return bool(find_gcs_addresses())


def _resources(r: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in sorted(r.items()) if k in ("CPU", "GPU") or k.startswith("accelerator")}


def check_resources(cfg: Config, rc: RayContext) -> None:
    """A private local Ray cannot grow: refuse what it can never place. Clusters may autoscale: warn."""
    import ray

    total = ray.cluster_resources()
    cap = cfg.captioner.workers if _needs_captioner(cfg) else 0
    problems = []
    if cfg.ray.gpus_per_worker > total.get("GPU", 0):
        problems.append(f"ray.gpus_per_worker={cfg.ray.gpus_per_worker} but the Ray cluster has "
                        f"{total.get('GPU', 0):g} GPU(s); use ray.gpus_per_worker=0 to sample on CPU")
    if cap and cfg.captioner.gpus_per_worker > total.get("GPU", 0):
        problems.append(f"captioner.gpus_per_worker={cfg.captioner.gpus_per_worker} but the Ray cluster "
                        f"has {total.get('GPU', 0):g} GPU(s)")
    if cfg.ray.cpus_per_worker > total.get("CPU", 0):
        problems.append(f"ray.cpus_per_worker={cfg.ray.cpus_per_worker} but the Ray cluster has "
                        f"{total.get('CPU', 0):g} CPU(s)")
    if problems and rc.mode == "local":
        raise ConfigError("; ".join(problems))
    for p in problems:
        log.warning("%s (waiting for the cluster to add resources)", p)
    n = cfg.ray.num_workers
    fits = min(total.get("CPU", 0) // cfg.ray.cpus_per_worker if cfg.ray.cpus_per_worker else n,
               total.get("GPU", 0) // cfg.ray.gpus_per_worker if cfg.ray.gpus_per_worker else n)
    if not problems and fits < cfg.ray.num_workers:
        log.warning("ray.num_workers=%d but the cluster can place %d sampler actor(s) now (%s); the rest "
                    "wait for resources", cfg.ray.num_workers, int(fits), _resources(total))


def start_captioners(cfg: Config, rc: RayContext) -> list:
    import ray

    from pipeline.driver.actors import CaptionerActor

    if not (_needs_captioner(cfg) and cfg.captioner.workers > 0):
        return []
    remote = ray.remote(CaptionerActor).options(
        num_gpus=cfg.captioner.gpus_per_worker, num_cpus=0, max_restarts=cfg.ray.max_actor_restarts,
        max_task_retries=cfg.ray.max_actor_restarts, runtime_env=rc.runtime_env or None)
    return [remote.remote(cfg) for _ in range(cfg.captioner.workers)]


def new_sampler(cfg: Config, rc: RayContext, worker_cls: type, slot: str, captioner: Any):
    import ray

    from pipeline.driver.actors import SamplerActor

    return ray.remote(SamplerActor).options(
        num_gpus=cfg.ray.gpus_per_worker, num_cpus=cfg.ray.cpus_per_worker,
        max_restarts=cfg.ray.max_actor_restarts, max_task_retries=0, scheduling_strategy="SPREAD",
        runtime_env=rc.runtime_env or None).remote(worker_cls, cfg, slot, captioner)


# ================================================================== dispatch
@dataclass
class Task:
    spec: ShardSpec
    slot: Slot
    attempt: int
    ref: Any
    submitted: float
    epoch: int  # the slot's actor incarnation it was sent to


@dataclass
class Slot:
    """One sampler actor position; the handle changes when a dead actor is replaced."""

    name: str
    handle: Any
    ready: bool = False
    dead: bool = False
    deaths: int = 0  # deaths noticed (Ray restarts the actor up to ray.max_actor_restarts times)
    epoch: int = 0  # +1 on every death noticed: tells a new death from late news of an old one
    down_since: float | None = None  # not ready since (restarting, or waiting for resources)
    probe_delay: float = 0.0
    blamed: int | None = None  # the shard that was running when the last death happened
    replacements: int = 0
    init_error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    inflight: list[Task] = field(default_factory=list)
    shards: int = 0
    rows: int = 0
    samples: int = 0
    busy_s: float = 0.0
    requeued: int = 0
    ready_at: float | None = None


@dataclass
class ShardState:
    spec: ShardSpec
    attempts: int = 0  # executions started
    failures: int = 0  # attempts that raised
    deaths: int = 0  # actor deaths while this shard was the one running
    errors: list[dict[str, Any]] = field(default_factory=list)


Hook = Callable[[str, dict], None]


class Dispatcher:
    """Bounded in-flight shards per sampler actor, retries, requeue on actor death, quarantine."""

    def __init__(self, cfg: Config, rc: RayContext, location: Location, specs: list[ShardSpec],
                 worker_cls: type, captioners: list, hooks: Hook | None = None,
                 total_rows: int = 0, rows_before: int = 0):
        self.cfg, self.rc, self.loc, self.worker_cls, self.hooks = cfg, rc, location, worker_cls, hooks
        self.captioners = captioners
        self.pending: deque[ShardState] = deque(ShardState(s) for s in specs)
        self.results: dict[int, ShardStats] = {}
        self.quarantined: dict[int, ShardState] = {}
        self.waiting: dict[Any, tuple[str, Any]] = {}  # ref -> ("probe", slot) | ("task", task)
        self.states: dict[int, ShardState] = {s.spec.shard_id: s for s in self.pending}
        self.slots: list[Slot] = []
        self.total_rows, self.rows_before = total_rows, rows_before
        self.rows_done = self.samples_done = 0
        self.failed_attempts = self.actor_deaths = self.requeues = 0
        self.abort_reason: str | None = None
        self.t0 = time.monotonic()
        self.first_ready: float | None = None
        self.replacement_budget = cfg.ray.num_workers
        self.delayed: list[tuple[float, Slot]] = []  # (due, slot): re-probes of restarting actors

    # -- events --------------------------------------------------------------------------------
    def emit(self, event: str, **payload: Any) -> None:
        if self.hooks is not None:
            self.hooks(event, payload)

    # -- actors --------------------------------------------------------------------------------
    def _captioner_for(self, i: int):
        if not self.captioners:
            return None
        from pipeline.driver.actors import RemoteCaptioner

        return RemoteCaptioner(self.captioners, self.cfg.captioner.batch_size, offset=i,
                               retries=max(1, self.cfg.ray.max_actor_restarts))

    def start(self) -> None:
        for i in range(self.cfg.ray.num_workers):
            name = f"sampler-{i}"
            slot = Slot(name, new_sampler(self.cfg, self.rc, self.worker_cls, name, self._captioner_for(i)),
                        down_since=time.monotonic())
            self.slots.append(slot)
            self._probe(slot)

    def _probe(self, slot: Slot) -> None:
        """describe() answers once the actor (re)started and loaded its models."""
        self.waiting[slot.handle.describe.remote()] = ("probe", slot)

    def _probe_later(self, slot: Slot) -> None:
        slot.probe_delay = min(max(0.5, slot.probe_delay * 2), PROBE_BACKOFF_MAX_S)
        self.delayed.append((time.monotonic() + slot.probe_delay, slot))

    def _due_probes(self) -> None:
        now = time.monotonic()
        due = [s for t, s in self.delayed if t <= now]
        self.delayed = [(t, s) for t, s in self.delayed if t > now]
        for slot in due:
            if not slot.dead:
                self._probe(slot)

    def _replace(self, slot: Slot, why: str) -> None:
        """Ray gave up on this actor (restarts used up, node gone): start a fresh one in its slot."""
        if self.replacement_budget <= 0:
            slot.dead = True
            log.error("%s is dead (%s); the replacement budget (ray.num_workers) is used up", slot.name, why)
            return
        import ray

        self.replacement_budget -= 1
        slot.replacements += 1
        log.warning("%s is dead (%s); starting a fresh actor in its place", slot.name, _last_line(why))
        self.emit("actor_replaced", slot=slot.name, error=why)
        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        idx = self.slots.index(slot)
        slot.handle = new_sampler(self.cfg, self.rc, self.worker_cls, slot.name, self._captioner_for(idx))
        slot.ready, slot.epoch, slot.probe_delay = False, slot.epoch + 1, 0.0
        slot.down_since = time.monotonic()
        self._probe(slot)

    def _on_probe(self, slot: Slot, ref: Any) -> None:
        import ray
        from ray.exceptions import ActorDiedError, RayActorError

        try:
            info = ray.get(ref)
        except RayActorError as e:
            if e.actor_init_failed:  # the constructor raised: another actor would fail the same way
                slot.dead, slot.init_error = True, _error_text(e)
                log.error("%s failed to start: %s", slot.name, _last_line(slot.init_error))
                self.emit("actor_init_failed", slot=slot.name, error=slot.init_error)
            elif isinstance(e, ActorDiedError):  # dead for good: restarts used up, or its node is gone
                self._replace(slot, _error_text(e, 300))
            elif time.monotonic() - (slot.down_since or time.monotonic()) > ACTOR_UNAVAILABLE_LIMIT_S:
                self._replace(slot, f"unavailable for {ACTOR_UNAVAILABLE_LIMIT_S:.0f}s: {_error_text(e, 300)}")
            else:  # restarting or briefly unreachable: ask again a little later
                self._probe_later(slot)
            return
        slot.info, slot.ready, slot.down_since, slot.probe_delay = info, True, None, 0.0
        now = time.monotonic()
        slot.ready_at = slot.ready_at or now
        self.first_ready = self.first_ready or now
        log.info("%s ready: node %s gpu %s pid %s", slot.name, info.get("node_ip"),
                 ",".join(info.get("gpu_ids") or []) or "-", info.get("pid"))
        self.emit("actor_ready", slot=slot.name, info=info)

    # -- shards --------------------------------------------------------------------------------
    def _fill(self) -> None:
        limit = self.cfg.ray.max_in_flight_per_worker
        while self.pending:
            ready = [s for s in self.slots if s.ready and not s.dead and len(s.inflight) < limit]
            if not ready:
                return
            slot = min(ready, key=lambda s: (len(s.inflight), self.slots.index(s)))
            st = self.pending.popleft()
            st.attempts += 1
            ref = slot.handle.run.remote(st.spec, st.attempts)
            task = Task(st.spec, slot, st.attempts, ref, time.monotonic(), slot.epoch)
            slot.inflight.append(task)
            self.waiting[ref] = ("task", task)
            self.emit("submitted", shard=st.spec.shard_id, slot=slot.name, attempt=st.attempts)

    def _committed_stats(self, shard_id: int) -> ShardStats | None:
        try:
            if self.loc.exists(stats_path(shard_id)):
                return read_stats(self.loc, shard_id)
        except Exception as e:  # noqa: BLE001 - the retry will tell
            log.warning("shard %06d: cannot read its commit file: %s", shard_id, e)
        return None

    def _done(self, task: Task, stats: ShardStats, info: dict[str, Any] | None) -> None:
        sid = task.spec.shard_id
        if sid in self.results:  # cannot happen with one attempt per shard at a time; be safe
            log.warning("shard %06d reported twice; keeping the first", sid)
            return
        self.results[sid] = stats
        slot = task.slot
        if info:
            slot.info.update(info)
        slot.shards += 1
        slot.rows += stats.rows
        slot.samples += stats.samples
        slot.busy_s += stats.wall_s
        self.rows_done += stats.rows
        self.samples_done += stats.samples
        log.debug("shard %06d committed by %s: %d samples, %d rejected, %d failed", sid, slot.name,
                  stats.samples, stats.rejected, stats.failed)
        self.emit("committed", shard=sid, slot=slot.name, stats=stats, info=slot.info)

    def _running_task(self, slot: Slot) -> Task | None:
        """The task the actor was executing: the oldest one not finished successfully."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        for t in slot.inflight:
            if t.epoch != slot.epoch:
                continue
            ready, _ = ray.wait([t.ref], timeout=0)
            if not ready:
                return t
            try:
                ray.get(t.ref, timeout=0)
            except RayTaskError:  # finished by raising: not the one the death interrupted
                continue
            except RayActorError:
                return t
            except Exception:  # noqa: BLE001
                continue
        return None

    def _on_task(self, task: Task, ref: Any) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        slot, st = task.slot, self.states[task.spec.shard_id]
        try:
            stats, info = ray.get(ref)
        except RayTaskError as e:  # raised inside run(), even if its cause was another actor's death
            self._failed(task, st, e)
            return
        except RayActorError as e:
            if task.epoch == slot.epoch and not slot.dead:  # first news of this death
                self._on_death(slot, e)
            slot.inflight.remove(task)
            stats = self._committed_stats(task.spec.shard_id)
            if stats is not None:  # committed before the actor died
                self._done(task, stats, None)
                return
            if slot.blamed == task.spec.shard_id:
                st.deaths += 1
                slot.blamed = None
            st.errors.append({"attempt": task.attempt, "slot": slot.name, "kind": "actor_died",
                              "error": _error_text(e)})
            if st.deaths >= self.cfg.ray.max_attempts:
                self._quarantine(st, f"the actor died {st.deaths} times while running it")
                return
            self.requeues += 1
            slot.requeued += 1
            self.pending.appendleft(st)
            self.emit("requeued", shard=task.spec.shard_id, slot=slot.name, attempt=task.attempt)
            return
        except Exception as e:  # noqa: BLE001 - the worker raised: a failed attempt
            self._failed(task, st, e)
            return
        slot.inflight.remove(task)
        self._done(task, stats, info)

    def _failed(self, task: Task, st: ShardState, e: Exception) -> None:
        slot = task.slot
        slot.inflight.remove(task)
        stats = self._committed_stats(task.spec.shard_id)
        if stats is not None:  # e.g. it lost a commit race to an earlier attempt: committed is done
            self._done(task, stats, None)
            return
        st.failures += 1
        self.failed_attempts += 1
        err = _error_text(e)
        st.errors.append({"attempt": task.attempt, "slot": slot.name, "kind": "exception", "error": err})
        log.warning("shard %06d attempt %d on %s failed (%d/%d): %s", task.spec.shard_id, task.attempt,
                    slot.name, st.failures, self.cfg.ray.max_attempts, _last_line(err))
        self.emit("failed", shard=task.spec.shard_id, slot=slot.name, attempt=task.attempt, error=err)
        if st.failures >= self.cfg.ray.max_attempts:
            self._quarantine(st, f"{st.failures} failed attempts")
        else:
            self.pending.append(st)

    def _on_death(self, slot: Slot, e: Exception) -> None:
        """The actor died (or its connection broke): blame the running shard, wait for the restart."""
        running = self._running_task(slot)
        slot.blamed = running.spec.shard_id if running else None
        slot.epoch += 1
        slot.ready, slot.down_since, slot.probe_delay = False, time.monotonic(), 0.0
        slot.deaths += 1
        self.actor_deaths += 1
        log.warning("%s died while running shard %s (%s); requeueing its shards", slot.name,
                    f"{slot.blamed:06d}" if slot.blamed is not None else "-", _last_line(_error_text(e, 300)))
        self.emit("actor_died", slot=slot.name, pid=slot.info.get("pid"), shard=slot.blamed,
                  error=_error_text(e))
        if getattr(e, "actor_init_failed", False):
            slot.dead, slot.init_error = True, _error_text(e)
        else:
            self._probe(slot)  # answers when Ray has restarted it; fails when Ray gave up on it

    def _quarantine(self, st: ShardState, why: str) -> None:
        self.quarantined[st.spec.shard_id] = st
        log.error("shard %06d quarantined: %s; last error: %s", st.spec.shard_id, why,
                  _last_line(st.errors[-1]["error"]) if st.errors else "-")
        self.emit("quarantined", shard=st.spec.shard_id, why=why, errors=list(st.errors))
        self._write_quarantine()

    def _write_quarantine(self) -> None:
        records = [quarantine_record(st) for st in self.quarantined.values()]
        self.loc.write_text_atomic(QUARANTINE_FILE, json.dumps({"shards": records}, indent=1, sort_keys=True))

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        import ray

        self.start()
        next_report = time.monotonic() + self.cfg.logging.progress_interval_s
        while self.pending or any(kind == "task" for kind, _ in self.waiting.values()):
            self._due_probes()
            self._fill()
            if not self.waiting and not self.delayed:
                reasons = sorted({s.init_error for s in self.slots if s.init_error} or {"all died"})
                self.abort_reason = "no sampler actor is left: " + "; ".join(_last_line(r) for r in reasons)
                log.error("%s; %d shard(s) not done", self.abort_reason, len(self.pending))
                return
            wake = min([next_report] + [t for t, _ in self.delayed])
            timeout = max(0.05, wake - time.monotonic())
            if not self.waiting:
                time.sleep(timeout)
                continue
            ready, _ = ray.wait(list(self.waiting), num_returns=1, timeout=timeout)
            for ref in ready:
                kind, obj = self.waiting.pop(ref)
                if kind == "probe":
                    self._on_probe(obj, ref)
                else:
                    self._on_task(obj, ref)
            if time.monotonic() >= next_report:
                self.report()
                next_report = time.monotonic() + self.cfg.logging.progress_interval_s

    def report(self) -> dict[str, Any]:
        """One progress line: rows done/total, samples/s overall and per worker, ETA."""
        now = time.monotonic()
        since = self.first_ready or now
        elapsed = max(now - since, 1e-9)
        rate_rows = self.rows_done / elapsed
        remaining = self.total_rows - self.rows_before - self.rows_done - sum(
            st.spec.num_rows for st in self.quarantined.values())
        eta = remaining / rate_rows if rate_rows > 0 else None
        per = {s.name: s.samples / max(now - s.ready_at, 1e-9) if s.ready_at else 0.0 for s in self.slots}
        ready = sum(s.ready for s in self.slots)
        done = self.rows_before + self.rows_done
        pct = 100.0 * done / self.total_rows if self.total_rows else 100.0
        log.info("progress: rows %d/%d (%.1f%%), shards %d done %d queued %d running, %.3f samples/s, "
                 "ETA %s | actors ready %d/%d | %s", done, self.total_rows, pct, len(self.results),
                 len(self.pending), sum(len(s.inflight) for s in self.slots), self.samples_done / elapsed,
                 _fmt_eta(eta), ready, len(self.slots),
                 ", ".join(f"{k} {v:.3f}/s" for k, v in per.items()))
        progress = {"rows_done": done, "rows_total": self.total_rows, "eta_s": eta, "per_worker": per,
                    "samples_per_s": self.samples_done / elapsed, "actors_ready": ready}
        self.emit("progress", **progress)
        return progress

    def stop(self) -> None:
        import ray

        for slot in self.slots:
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        for h in self.captioners:
            try:
                ray.kill(h, no_restart=True)
            except Exception:  # noqa: BLE001
                pass


def quarantine_record(st: ShardState) -> dict[str, Any]:
    s = st.spec
    return {"shard": s.shard_id, "name": s.name, "path": s.path, "row_start": s.row_start,
            "row_stop": s.row_stop, "attempts": st.attempts, "failures": st.failures,
            "actor_deaths": st.deaths, "errors": st.errors}


def _error_text(e: BaseException, limit: int = ERROR_CHARS) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else "..." + text[-limit:]


def _last_line(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _fmt_eta(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# ================================================================== the job
@dataclass
class JobResult:
    exit_code: int
    summary: dict[str, Any]
    output: str


def run_job(cfg: Config, worker_cls: type | None = None, hooks: Hook | None = None) -> JobResult:
    """Run one job for a validated config. Raises InputError/ConfigError/RunRefused before Ray starts.

    `worker_cls` (default pipeline.worker.ShardWorker) is constructed in each sampler actor as
    `worker_cls(cfg, captioner=..., name=...)`; tests pass doubles. `hooks(event, payload)` is called
    in the driver at: actor_ready, actor_init_failed, submitted, committed, failed, actor_died,
    requeued, quarantined, progress (fault-injection tests use it, e.g. to kill an actor).
    """
    t0 = time.monotonic()
    p = prepare(cfg)
    loc, specs = p.location, p.specs
    todo = [s for s in specs if s.shard_id not in p.committed_before]
    total_rows = sum(s.num_rows for s in specs)
    rows_before = sum(s.num_rows for s in specs if s.shard_id in p.committed_before)
    log.info("output: %s", loc.url)
    log.info("plan: %d shard(s), %d row(s); %d already committed, %d to run (fingerprint %s)", len(specs),
             total_rows, len(p.committed_before), len(todo), p.fingerprint[:12])
    d: Dispatcher | None = None
    rc: RayContext | None = None
    error: str | None = None
    if todo:
        if worker_cls is None:
            from pipeline.worker import ShardWorker

            worker_cls = ShardWorker
        rc = connect_ray(p.cfg)
        try:
            check_resources(p.cfg, rc)
            d = Dispatcher(p.cfg, rc, loc, todo, worker_cls, start_captioners(p.cfg, rc), hooks,
                           total_rows, rows_before)
            try:
                d.run()
                error = d.abort_reason
            finally:
                d.stop()
        finally:
            if rc.started_here:
                import ray

                ray.shutdown()
    if d is None or not d.quarantined:
        loc.remove(QUARANTINE_FILE)  # a quarantine of an earlier run that has now been redone
    index = write_index(loc)
    summary = build_summary(p, d, rc, index, time.monotonic() - t0, error)
    try:  # the card describes committed data; failing to draw it must not fail a finished run
        from pipeline.report.card import write_card

        summary["card"] = write_card(loc, p.cfg, summary)
    except Exception as e:  # noqa: BLE001
        log.error("could not write the dataset card (rerun: python -m pipeline.report.card %s): %s", loc.url,
                  _error_text(e, 500))
        summary["card"] = None
    loc.write_text_atomic(SUMMARY_FILE, json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    return JobResult(summary["exit_code"], summary, loc.url)


def build_summary(p: Prepared, d: Dispatcher | None, rc: RayContext | None, index: dict[str, Any],
                  wall_s: float, error: str | None) -> dict[str, Any]:
    planned = {s.shard_id for s in p.specs}
    committed = {s["shard"] for s in index["shards"]} & planned
    quarantined = sorted(d.quarantined) if d else []
    missing = sorted(planned - committed - set(quarantined))
    if error or missing:
        status, code = "failed", EXIT_FAILED
    elif quarantined:
        status, code = "quarantined", EXIT_FAILED
    else:
        status, code = "succeeded", EXIT_OK
    new = d.results if d else {}
    run_samples = sum(s.samples for s in new.values())
    sampling_s = (time.monotonic() - d.first_ready) if d and d.first_ready else 0.0
    workers = {}
    for s in d.slots if d else []:
        workers[s.name] = {
            "node_ip": s.info.get("node_ip"), "node_id": s.info.get("node_id"), "host": s.info.get("host"),
            "gpu_ids": s.info.get("gpu_ids"), "device": s.info.get("device"), "shards": s.shards,
            "rows": s.rows, "samples": s.samples, "busy_s": round(s.busy_s, 3),
            "samples_per_s": round(s.samples / s.busy_s, 4) if s.busy_s else 0.0, "requeued": s.requeued,
            "deaths": s.deaths, "replacements": s.replacements, "dead": s.dead, "init_error": s.init_error,
            "captioner": s.info.get("captioner")}
    totals = index["totals"]
    return {
        "status": status, "exit_code": code, "error": error, "output": p.location.url,
        "fingerprint": p.fingerprint, "archived_previous_run": p.archived,
        "planned_shards": len(planned), "committed_shards": len(committed),
        "skipped_shards": len(p.committed_before), "new_shards": len(new),
        "quarantined_shards": quarantined, "missing_shards": missing,
        "rows": totals["rows"], "samples": totals["samples"], "rejected": totals["rejected"],
        "failed": totals["failed"], "bytes": totals["bytes"],
        "this_run": {"shards": len(new), "rows": sum(s.rows for s in new.values()), "samples": run_samples,
                     "sampling_s": round(sampling_s, 3),
                     "samples_per_s": round(run_samples / sampling_s, 4) if sampling_s else 0.0,
                     "failed_attempts": d.failed_attempts if d else 0,
                     "actor_deaths": d.actor_deaths if d else 0, "requeues": d.requeues if d else 0},
        "wall_s": round(wall_s, 3),
        "samples_per_s": round(run_samples / wall_s, 4) if wall_s else 0.0,
        "workers": workers,
        "ray": {"mode": rc.mode, "address": rc.address} if rc else None,
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"synthgen: {s['status']} (exit {s['exit_code']})" + (f": {s['error']}" if s["error"] else ""),
        f"  shards   planned {s['planned_shards']}, committed {s['committed_shards']} "
        f"(skipped {s['skipped_shards']}, new {s['new_shards']}), quarantined {len(s['quarantined_shards'])}"
        + (f" {s['quarantined_shards'][:10]}" if s["quarantined_shards"] else "")
        + (f", missing {len(s['missing_shards'])}" if s["missing_shards"] else ""),
        f"  rows     {s['rows']}: samples {s['samples']}, rejected {s['rejected']}, failed {s['failed']}",
        f"  time     {s['wall_s']:.1f}s wall, {s['this_run']['samples']} new samples, "
        f"{s['this_run']['samples_per_s']:.3f} samples/s while sampling; failed attempts "
        f"{s['this_run']['failed_attempts']}, actor deaths {s['this_run']['actor_deaths']}, "
        f"requeues {s['this_run']['requeues']}",
    ]
    if s["workers"]:
        lines.append(f"  {'worker':<12} {'node':<16} {'gpu':<6} {'shards':>6} {'samples':>8} {'busy_s':>9} "
                     f"{'samples/s':>10}")
        for name, w in s["workers"].items():
            gpus = ",".join(w["gpu_ids"] or []) or "-"
            lines.append(f"  {name:<12} {str(w['node_ip']):<16} {gpus:<6} {w['shards']:>6} {w['samples']:>8} "
                         f"{w['busy_s']:>9.1f} {w['samples_per_s']:>10.3f}")
    if s["quarantined_shards"]:
        lines.append(f"  quarantine: {s['output'].rstrip('/')}/{QUARANTINE_FILE}")
    if s.get("card"):
        lines.append(f"  card: {s['card']}")
    lines.append(f"output: {s['output']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, worker_cls: type | None = None, hooks: Hook | None = None) -> int:
    files, overrides = parse_args(argv)
    try:
        cfg = load_config(files, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    # The configured level applies to our loggers only: third-party DEBUG output (botocore) can carry
    # credentials, and is noise anyway.
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("synthgen", "pipeline"):
        logging.getLogger(name).setLevel(cfg.logging.level)
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and not is_s3(cfg.output.path) \
            and not os.path.isabs(cfg.output.path):
        log.warning("output.path=%s is relative and this is a submitted Ray job: it resolves inside the "
                    "job's temporary working dir (%s); use an absolute path or s3:// to keep the output",
                    cfg.output.path, os.path.abspath(cfg.output.path))
    try:
        result = run_job(cfg, worker_cls=worker_cls, hooks=hooks)
    except (ConfigError, InputError, RunRefused) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; committed shards are kept, run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_summary(result.summary), flush=True)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())

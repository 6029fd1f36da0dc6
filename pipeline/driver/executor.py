"""The Ray executor: sampler actors, the `ray.wait` loop, and carrying out what the policy decides.

It only moves work: every decision (which actor, retry or quarantine, whom to blame, when to replace
an actor or give up on a shard, which queued shard moves to an idle actor) is made by
pipeline/driver/policy.py. Before any retry it checks the shard's commit file, so a shard that
committed just before its actor died is not sampled twice.

Driver hooks, `hooks(event, payload)`, are called in the driver's thread at: actor_ready,
actor_init_failed, actor_replaced, submitted, moved, committed, failed, timed_out, actor_died, requeued,
quarantined, progress, stalled (fault-injection tests use them, e.g. to kill an actor at a chosen moment).
`on_commit(stats)` is called once per committed shard with its full stats (summary included: the
driver's Ledger keeps what the index and the card need); the book counts them (totals and a bitmap of shard ids).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.config import Config
from pipeline.data.layout import QUARANTINE_FILE, read_stats, stats_path
from pipeline.data.storage import Location
from pipeline.driver import policy as P
from pipeline.driver.actors import STATUS, new_sampler, remote_captioner
from pipeline.driver.localray import RayContext
from pipeline.driver.progress import Progress
from pipeline.records import ShardSpec, ShardStats

log = logging.getLogger(__name__)
Hook = Callable[[str, dict], None]


class Executor:
    """Runs the shards on `ray.num_workers` sampler actors until each is committed or quarantined."""

    def __init__(self, cfg: Config, rc: RayContext, location: Location, specs: Sequence[ShardSpec],
                 worker_cls: type, captioners: list, hooks: Hook | None = None,
                 total_rows: int = 0, rows_before: int = 0, on_commit: Callable[[ShardStats], None] | None = None):
        self.cfg, self.rc, self.loc, self.worker_cls, self.hooks = cfg, rc, location, worker_cls, hooks
        self.on_commit = on_commit
        self.captioners = captioners
        r = cfg.ray
        self.limits = P.Limits(r.max_attempts, r.max_in_flight_per_worker, r.shard_timeout_s,
                               replacements=r.num_workers)
        self.book = P.ShardBook(specs, self.limits)
        self.replacements_left = self.limits.replacements
        self.slots: list[P.Slot] = []
        self.waiting: dict[Any, tuple[str, Any]] = {}  # ref -> ("probe", slot) | ("task", task)
        self.delayed: list[tuple[float, P.Slot]] = []  # (due, slot): re-probes of restarting actors
        self.progress = Progress(total_rows, rows_before, cfg.logging.progress_interval_s,
                                 stall_s=cfg.logging.stall_warning_s)
        self.abort_reason: str | None = None

    def emit(self, event: str, **payload: Any) -> None:
        if self.hooks is not None:
            self.hooks(event, payload)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        for i in range(self.cfg.ray.num_workers):
            slot = P.Slot(f"sampler-{i}", down_since=time.monotonic())
            slot.handle = self._new_actor(slot.name, i)
            self.slots.append(slot)
            self._probe(slot)
        with self.progress.showing():
            self._loop()
            self.emit("progress", **self.progress.report(self.book, self.slots))  # the final figures

    def _loop(self) -> None:
        import ray

        while self.book.open(self.slots):
            now = time.monotonic()
            self._due_probes(now)
            self._timeouts(now)
            self._fill()
            self._move_queued()
            if not self.waiting and not self.delayed:
                reasons = sorted({s.init_error for s in self.slots if s.init_error} or {"all died"})
                self.abort_reason = "no sampler actor is left: " + "; ".join(P.last_line(r) for r in reasons)
                log.error("%s; %d shard(s) not done", self.abort_reason, len(self.book.pending))
                return
            wake = min([self.progress.next_at] + [t for t, _ in self.delayed] + self._deadlines())
            timeout = max(0.05, wake - time.monotonic())
            if not self.waiting:
                time.sleep(timeout)
                continue
            ready, _ = ray.wait(list(self.waiting), num_returns=1, timeout=timeout)
            for ref in ready:
                kind, obj = self.waiting.pop(ref)
                if kind == "probe":
                    self._on_probe(obj, ref)
                elif kind == "live":
                    self._on_live(obj, ref)
                else:
                    self._on_task(obj, ref)
            if self.progress.due():
                self._poll_live()
                figures = self.progress.report(self.book, self.slots)
                self.emit("progress", **figures)
                if figures["stalled_s"] is not None:
                    self._stalled(figures["stalled_s"])

    def stop(self) -> None:
        import ray

        for handle in [s.handle for s in self.slots] + list(self.captioners):
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    # -- actors --------------------------------------------------------------------------------
    def _new_actor(self, name: str, index: int):
        """A sampler actor; its captioner calls start at captioner actor `index` (spreads the load)."""
        captioner = remote_captioner(self.cfg, self.captioners, offset=index)
        return new_sampler(self.cfg, self.rc, self.worker_cls, name, captioner)

    def _probe(self, slot: P.Slot) -> None:
        """describe() answers once the actor (re)started and loaded its models."""
        self.waiting[slot.handle.describe.remote()] = ("probe", slot)

    def _stalled(self, still_s: float) -> None:
        """Nothing moved for logging.stall_warning_s: say what is running and how much memory is left
        (a host that cannot hold the models pages instead of failing: the run just stops moving)."""
        import psutil

        ready = [s.name for s in self.slots if s.ready]
        running = {s.name: [t.spec.shard_id for t in s.live] for s in self.slots if s.live}
        free = psutil.virtual_memory().available / 2**30
        log.warning("stalled: no row done and no actor ready for %.0f min; sampler actors ready %d/%d %s, "
                    "running %s, host memory available %.1f GiB. Check `ray status`, the actors' logs, and "
                    "whether the models fit (a host short of memory pages instead of failing)",
                    still_s / 60, len(ready), len(self.slots), ready, running or "nothing", free)
        self.emit("stalled", still_s=still_s, ready=ready, running=running, available_gib=free)

    def _poll_live(self) -> None:
        """Ask each busy actor how far its shard is (answered beside the shard: the status group);
        the answer counts at the next report."""
        polling = {obj.name for kind, obj in self.waiting.values() if kind == "live"}
        for slot in self.slots:
            if slot.ready and not slot.dead and slot.live and slot.name not in polling:
                self.waiting[slot.handle.progress.options(concurrency_group=STATUS).remote()] = ("live", slot)

    def _on_live(self, slot: P.Slot, ref: Any) -> None:
        import ray

        try:
            now = ray.get(ref)
        except Exception:  # noqa: BLE001 - the actor died or restarted: its task's result says so
            return
        # only an answer about an attempt still running there (not one of a shard's earlier attempts)
        if now and any((t.spec.shard_id, t.attempt) == (now["shard"], now.get("attempt")) for t in slot.live):
            self.progress.update(slot.name, now["shard"], now["rows"], now["samples"], now.get("tries"))

    def _due_probes(self, now: float) -> None:
        due = [s for t, s in self.delayed if t <= now]
        self.delayed = [(t, s) for t, s in self.delayed if t > now]
        for slot in due:
            if not slot.dead:
                self._probe(slot)

    def _replace(self, slot: P.Slot, why: str) -> None:
        """Ray gave up on this actor (or it hangs): start a fresh one in its slot."""
        import ray

        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        if not P.replace_actor(slot, self.replacements_left, time.monotonic()):
            log.error("%s is dead (%s); the replacement budget (ray.num_workers) is used up", slot.name,
                      P.last_line(why))
            return
        self.replacements_left -= 1
        log.warning("%s is dead (%s); starting a fresh actor in its place", slot.name, P.last_line(why))
        self.emit("actor_replaced", slot=slot.name, error=why)
        slot.handle = self._new_actor(slot.name, self.slots.index(slot))
        self._probe(slot)

    def _on_probe(self, slot: P.Slot, ref: Any) -> None:
        import ray
        from ray.exceptions import ActorDiedError, RayActorError

        try:
            info = ray.get(ref)
        except RayActorError as e:
            decision = P.after_probe_error(slot, e.actor_init_failed, isinstance(e, ActorDiedError),
                                           time.monotonic(), self.limits)
            if decision == "dead":  # the constructor raised: another actor would fail the same way
                slot.dead, slot.init_error = True, P.error_text(e)
                log.error("%s failed to start: %s", slot.name, P.last_line(slot.init_error))
                self.emit("actor_init_failed", slot=slot.name, error=slot.init_error)
            elif decision == "replace":
                self._replace(slot, P.error_text(e, 300))
            else:  # restarting or briefly unreachable: ask again a little later
                self.delayed.append((time.monotonic() + P.next_probe_delay(slot), slot))
            return
        P.became_ready(slot, info, time.monotonic())
        self.progress.started()
        log.info("%s ready: node %s gpu %s pid %s", slot.name, info.get("node_ip"),
                 ",".join(info.get("gpu_ids") or []) or "-", info.get("pid"))
        self.emit("actor_ready", slot=slot.name, info=info)

    def _on_death(self, slot: P.Slot, e: Exception) -> None:
        """The actor died (or its connection broke): blame the running shard, wait for the restart."""
        running = P.running_task(slot, self._statuses(slot), lambda i: self._committed_stats(i) is not None)
        P.died(slot, running, time.monotonic())
        self.book.actor_deaths += 1
        log.warning("%s died while running shard %s (%s); requeueing its shards", slot.name,
                    f"{slot.blamed:06d}" if slot.blamed is not None else "-", P.last_line(P.error_text(e, 300)))
        self.emit("actor_died", slot=slot.name, pid=slot.info.get("pid"), shard=slot.blamed, error=P.error_text(e))
        if getattr(e, "actor_init_failed", False):
            slot.dead, slot.init_error = True, P.error_text(e)
        else:
            self._probe(slot)  # answers when Ray has restarted it; fails when Ray gave up on it

    def _statuses(self, slot: P.Slot) -> dict[int, str]:
        """What Ray knows of each task of the actor: "ok", "raised", "died" or "unknown" (pending)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        out = {}
        for t in slot.live:
            if not ray.wait([t.ref], timeout=0)[0]:
                out[id(t)] = "unknown"
                continue
            try:
                ray.get(t.ref, timeout=0)
                out[id(t)] = "ok"
            except RayTaskError:  # finished by raising: not the one the death interrupted
                out[id(t)] = "raised"
            except RayActorError:
                out[id(t)] = "died"
            except Exception:  # noqa: BLE001
                out[id(t)] = "raised"
        return out

    # -- shards --------------------------------------------------------------------------------
    def _fill(self) -> None:
        while self.book.pending:
            slot = P.pick_slot(self.slots, self.limits.max_in_flight, len(self.book.pending))
            if slot is None:
                return
            st = self.book.take()
            ref = slot.handle.run.remote(st.spec, st.attempts)
            task = P.Task(st.spec, slot, st.attempts, ref, slot.epoch)
            P.submitted(slot, task, time.monotonic())
            self.waiting[ref] = ("task", task)
            self.emit("submitted", shard=st.spec.shard_id, slot=slot.name, attempt=st.attempts)

    def _move_queued(self) -> None:
        """At the tail: a shard queued behind another actor's running one goes to an idle actor. Its
        queued attempt is cancelled (Ray drops an actor task that has not started) and forgotten: had it
        started anyway, it runs on, and whichever attempt commits second loses cleanly."""
        import ray

        while (move := P.to_move(self.slots, len(self.book.pending))) is not None:
            task, idle = move
            try:
                ray.cancel(task.ref, recursive=False)
            except Exception as e:  # noqa: BLE001 - finished or its actor gone: the new attempt finds out
                log.debug("cancel of shard %06d attempt %d: %s", task.spec.shard_id, task.attempt, e)
            self.waiting.pop(task.ref, None)
            P.moved(task.slot, task)
            self.book.moved(task)
            log.info("shard %06d: moved from %s, where it waited behind a running shard, to idle %s",
                     task.spec.shard_id, task.slot.name, idle.name)
            self.emit("moved", shard=task.spec.shard_id, slot=task.slot.name, to=idle.name, attempt=task.attempt)
            self._fill()

    def _deadlines(self) -> list[float]:
        t = self.limits.shard_timeout_s
        return [s.running_since + t for s in self.slots if t > 0 and s.ready and s.live and s.running_since]

    def _timeouts(self, now: float) -> None:
        import ray

        for slot in self.slots:
            task = P.overdue(slot, now, self.limits.shard_timeout_s)
            if task is None or ray.wait([task.ref], timeout=0)[0]:  # (its result is in: the loop takes it)
                continue
            self.waiting.pop(task.ref, None)
            P.finished(slot, task, now)
            err = (f"no result after {self.limits.shard_timeout_s:g}s (ray.shard_timeout_s): the actor is "
                   "replaced; raise ray.shard_timeout_s if shards are simply this slow")
            log.warning("shard %06d attempt %d on %s timed out", task.spec.shard_id, task.attempt, slot.name)
            self.emit("timed_out", shard=task.spec.shard_id, slot=slot.name, attempt=task.attempt)
            self._failed(task, err, kind="timeout")
            self._replace(slot, err)  # the other shards queued on it come back as actor deaths

    def _committed_stats(self, shard_id: int) -> ShardStats | None:
        try:
            if self.loc.exists(stats_path(shard_id)):
                return read_stats(self.loc, shard_id)
        except Exception as e:  # noqa: BLE001 - the retry will tell
            log.warning("shard %06d: cannot read its commit file: %s", shard_id, e)
        return None

    def _done(self, task: P.Task, stats: ShardStats, info: dict[str, Any] | None) -> None:
        sid, slot = task.spec.shard_id, task.slot
        # the book counts the shard (its totals, not its stats: the ledger keeps what the index needs)
        if not self.book.succeeded(sid, stats):  # one attempt per shard at a time
            log.warning("shard %06d reported twice; keeping the first", sid)
            return
        if self.on_commit is not None:
            self.on_commit(stats)
        if info:
            slot.info.update(info)
        slot.shards += 1
        slot.rows += stats.rows
        slot.samples += stats.samples
        slot.busy_s += stats.wall_s
        self.progress.add(stats, slot.name)
        log.debug("shard %06d committed by %s: %d samples, %d rejected, %d failed", sid, slot.name,
                  stats.samples, stats.rejected, stats.failed)
        self.emit("committed", shard=sid, slot=slot.name, stats=stats, info=slot.info)

    def _on_task(self, task: P.Task, ref: Any) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        slot = task.slot
        try:
            stats, info = ray.get(ref)
        except RayTaskError as e:  # raised inside run(), even if its cause was another actor's death
            P.finished(slot, task, time.monotonic())
            self._failed(task, P.error_text(e))
            return
        except RayActorError as e:
            if task.epoch == slot.epoch and not slot.dead:  # first news of this death
                self._on_death(slot, e)
            P.finished(slot, task, time.monotonic())
            self._lost(task, e)
            return
        except Exception as e:  # noqa: BLE001 - anything else: a failed attempt
            P.finished(slot, task, time.monotonic())
            self._failed(task, P.error_text(e))
            return
        P.finished(slot, task, time.monotonic())
        self._done(task, stats, info)

    def _failed(self, task: P.Task, err: str, kind: str = "exception") -> None:
        self.progress.stopped(task.slot.name, task.spec.shard_id)
        stats = self._committed_stats(task.spec.shard_id)
        if stats is not None:  # e.g. it lost a commit race to an earlier attempt: committed is done
            self._done(task, stats, None)
            return
        decision = self.book.failed(task, err, kind)
        st = self.book.states[task.spec.shard_id]
        log.warning("shard %06d attempt %d on %s failed (%d/%d): %s", task.spec.shard_id, task.attempt,
                    task.slot.name, st.failures, self.limits.max_attempts, P.last_line(err))
        self.emit("failed", shard=task.spec.shard_id, slot=task.slot.name, attempt=task.attempt, error=err)
        if decision == "quarantine":
            self._quarantined(st, f"{st.failures} failed attempts")

    def _lost(self, task: P.Task, e: Exception) -> None:
        self.progress.stopped(task.slot.name, task.spec.shard_id)
        stats = self._committed_stats(task.spec.shard_id)
        if stats is not None:  # committed before the actor died
            self._done(task, stats, None)
            return
        if self.book.lost(task, P.error_text(e)) == "quarantine":
            st = self.book.states[task.spec.shard_id]
            self._quarantined(st, f"the actor died {st.deaths} times while running it")
        else:
            self.emit("requeued", shard=task.spec.shard_id, slot=task.slot.name, attempt=task.attempt)

    def _quarantined(self, st: P.ShardState, why: str) -> None:
        log.error("shard %06d quarantined: %s; last error: %s", st.spec.shard_id, why,
                  P.last_line(st.errors[-1]["error"]) if st.errors else "-")
        self.emit("quarantined", shard=st.spec.shard_id, why=why, errors=list(st.errors))
        records = [P.quarantine_record(s) for s in self.book.quarantined.values()]
        self.loc.write_text_atomic(QUARANTINE_FILE, json.dumps({"shards": records}, indent=1, sort_keys=True))

"""What the driver does about each event: retries, blame, quarantine, timeouts, actor replacement.

Pure policy: no Ray, no I/O, no clock of its own (`now` is an argument), so every rule is testable
with fake events (tests/test_policy.py). The Ray executor (pipeline/driver/executor.py) turns Ray's
answers into the calls below and carries out what they decide.

Rules:
- A shard whose attempt raised counts a failed attempt and goes to the back of the queue; after
  `max_attempts` failed attempts it is quarantined, and the rest of the job goes on.
- When an actor dies, the shards queued on it are requeued at the front without counting a failed
  attempt. Only the shard it was running is blamed: a shard that was running during `max_attempts`
  actor deaths is quarantined as poison (e.g. it makes the process run out of host memory).
- A shard running longer than `shard_timeout_s` counts a failed attempt (the actor may hang for
  good: it is replaced, and the shards queued on it are requeued).
- An actor that failed in its constructor is not restarted or replaced (another one would fail the
  same way). One that Ray gave up on (restarts used up, node gone), or that stayed unreachable for
  `unavailable_limit_s`, is replaced by a fresh actor, at most `replacements` times per run.
- Each actor holds at most `max_in_flight` shards; a shard goes to the least loaded ready actor. An
  actor takes a shard to queue behind its running one only while more shards are pending than actors
  are still starting, so the first actor ready does not take the shards the others would start.
- At the tail, when a ready actor idles and nothing is pending, a shard queued (not yet started)
  behind another actor's running one moves to it: its queued attempt is cancelled (no failed attempt;
  if it had started anyway, exactly-once commits make the duplicate harmless).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.records import ShardSpec, ShardStats

PROBE_BACKOFF_MAX_S = 10.0  # re-probe interval cap for a restarting actor
ACTOR_UNAVAILABLE_LIMIT_S = 900.0  # an actor unreachable this long is replaced
ERROR_CHARS = 4000


@dataclass(frozen=True)
class Limits:
    max_attempts: int = 3
    max_in_flight: int = 2
    shard_timeout_s: float = 0.0  # 0: none
    replacements: int = 1  # fresh actors per run, over all slots
    unavailable_limit_s: float = ACTOR_UNAVAILABLE_LIMIT_S


@dataclass
class ShardState:
    spec: ShardSpec
    attempts: int = 0  # attempts submitted (a moved one too: attempt numbers stay unique)
    failures: int = 0  # attempts that raised or timed out
    deaths: int = 0  # actor deaths while this shard was the one running
    moves: int = 0  # queued attempts cancelled to run on an idle actor (never counted as failures)
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Task:
    """One attempt of one shard, sent to one actor incarnation of a slot."""

    spec: ShardSpec
    slot: Slot
    attempt: int
    ref: Any  # the executor's handle on the result (an ObjectRef)
    epoch: int  # the slot's actor incarnation it was sent to


@dataclass
class Slot:
    """One sampler actor position; the handle changes when a dead actor is replaced."""

    name: str
    handle: Any = None
    ready: bool = False
    dead: bool = False
    deaths: int = 0  # deaths noticed (Ray restarts the actor up to ray.max_actor_restarts times)
    epoch: int = 0  # +1 on every death or replacement: tells a new death from late news of an old one
    down_since: float | None = None  # not ready since (starting, restarting, waiting for resources)
    probe_delay: float = 0.0
    blamed: int | None = None  # the shard that was running when the last death happened
    replacements: int = 0
    init_error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    inflight: list[Task] = field(default_factory=list)  # in submission order = execution order
    running_since: float | None = None  # when its oldest in-flight task started running
    shards: int = 0
    rows: int = 0
    samples: int = 0
    busy_s: float = 0.0
    requeued: int = 0
    ready_at: float | None = None

    @property
    def live(self) -> list[Task]:
        """Tasks sent to the current actor incarnation."""
        return [t for t in self.inflight if t.epoch == self.epoch]


# ------------------------------------------------------------------ slots
def pick_slot(slots: list[Slot], limit: int, pending: int) -> Slot | None:
    """The least loaded ready actor with room for one more shard (ties: the first), for the next of
    `pending` shards; None when that actor is busy and the actors still starting could take them all."""
    ready = [s for s in slots if s.ready and not s.dead and len(s.inflight) < limit]
    if not ready:
        return None
    best = min(ready, key=lambda s: (len(s.inflight), slots.index(s)))
    starting = sum(not s.ready and not s.dead for s in slots)
    return None if best.inflight and pending <= starting else best


def to_move(slots: list[Slot], pending: int) -> tuple[Task, Slot] | None:
    """(a queued task, the idle ready actor it should move to), or None. Only when nothing is pending:
    the last task queued on the actor with the most queued, ties the one whose running shard started
    last (it frees last)."""
    idle = [s for s in slots if s.ready and not s.dead and not s.inflight]
    busy = [s for s in slots if s.ready and not s.dead and len(s.live) > 1]
    if pending or not idle or not busy:
        return None
    src = max(busy, key=lambda s: (len(s.live), s.running_since or 0.0, -slots.index(s)))
    return src.live[-1], idle[0]


def moved(slot: Slot, task: Task) -> None:
    """A queued task left its actor (its attempt cancelled); the running one is never moved."""
    assert task in slot.live[1:], "only a queued task moves"
    slot.inflight.remove(task)


def submitted(slot: Slot, task: Task, now: float) -> None:
    if not slot.live:  # an idle actor starts on it at once
        slot.running_since = now
    slot.inflight.append(task)


def finished(slot: Slot, task: Task, now: float) -> None:
    """A task's result arrived (success or error): the next queued one starts running now."""
    was_running = bool(slot.live) and slot.live[0] is task
    slot.inflight.remove(task)
    if was_running:
        slot.running_since = now if slot.live else None


def overdue(slot: Slot, now: float, timeout_s: float) -> Task | None:
    """The running task of a ready actor once it has run longer than `timeout_s` (0: never)."""
    if timeout_s <= 0 or not slot.ready or slot.dead or not slot.live or slot.running_since is None:
        return None
    return slot.live[0] if now - slot.running_since > timeout_s else None


def running_task(slot: Slot, status: dict[int, str],
                 committed: Callable[[int], bool] = lambda shard_id: False) -> Task | None:
    """The task the actor was executing when it died: the oldest of its incarnation whose result is
    not a finished success or exception. `status[id(task)]`: "ok", "raised", "died" or "unknown".
    A shard that `committed` (asked only of those candidates: its commit file exists) had finished, even
    if its result went down with the actor: on a loaded host the actor can start the next shard, and die
    in it, before the reply of the one it committed has left the process (seen in a suite run)."""
    for t in slot.live:
        if status.get(id(t), "unknown") in ("died", "unknown") and not committed(t.spec.shard_id):
            return t
    return None


def died(slot: Slot, running: Task | None, now: float) -> None:
    slot.blamed = running.spec.shard_id if running else None
    slot.epoch += 1
    slot.ready, slot.down_since, slot.probe_delay, slot.running_since = False, now, 0.0, None
    slot.deaths += 1


def became_ready(slot: Slot, info: dict[str, Any], now: float) -> None:
    slot.info, slot.ready, slot.down_since, slot.probe_delay = info, True, None, 0.0
    slot.ready_at = slot.ready_at or now


def next_probe_delay(slot: Slot) -> float:
    """Back off while an actor restarts: 0.5 s, doubling, at most PROBE_BACKOFF_MAX_S."""
    slot.probe_delay = min(max(0.5, slot.probe_delay * 2), PROBE_BACKOFF_MAX_S)
    return slot.probe_delay


def after_probe_error(slot: Slot, init_failed: bool, gone_for_good: bool, now: float,
                      limits: Limits) -> str:
    """"dead" (constructor failed: no retry), "replace" (Ray gave up, or unreachable too long) or
    "wait" (restarting: probe again later)."""
    if init_failed:
        return "dead"
    if gone_for_good or now - (slot.down_since if slot.down_since is not None else now) > limits.unavailable_limit_s:
        return "replace"
    return "wait"


def replace_actor(slot: Slot, budget: int, now: float) -> bool:
    """Account for a fresh actor in the slot; False (the slot is dead) when the budget is used up."""
    slot.ready, slot.running_since = False, None
    if budget <= 0:
        slot.dead = True
        return False
    slot.replacements += 1
    slot.epoch, slot.probe_delay, slot.down_since = slot.epoch + 1, 0.0, now
    return True


# ------------------------------------------------------------------ shards
class ShardQueue:
    """The shards to submit, in order: those put back at the front (requeued, moved), then the plan's
    shards not yet taken, then those put at the back (retries). A ShardState is made (and entered in
    `states`) only when its shard is first taken: a plan of a million shards is not a million objects.
    It behaves as a deque for the few operations the book uses; anything else (indexing, rotate, pop,
    iteration) first makes the remaining states, for tests and inspection."""

    def __init__(self, specs: Sequence[ShardSpec], states: dict[int, ShardState]):
        self.front: deque[ShardState] = deque()
        self.specs, self.next, self.states = specs, 0, states
        self.back: deque[ShardState] = deque()

    def __len__(self) -> int:
        return len(self.front) + len(self.specs) - self.next + len(self.back)

    def __bool__(self) -> bool:
        return len(self) > 0

    def _new(self) -> ShardState:
        st = ShardState(self.specs[self.next])
        self.next += 1
        self.states[st.spec.shard_id] = st
        return st

    def popleft(self) -> ShardState:
        if self.front:
            return self.front.popleft()
        if self.next < len(self.specs):
            return self._new()
        return self.back.popleft()

    def appendleft(self, st: ShardState) -> None:
        self.front.appendleft(st)

    def append(self, st: ShardState) -> None:
        self.back.append(st)

    def _all(self) -> deque[ShardState]:
        while self.next < len(self.specs):
            self.front.append(self._new())
        self.front.extend(self.back)
        self.back.clear()
        return self.front

    def __iter__(self) -> Iterator[ShardState]:
        return iter(self._all())

    def __getitem__(self, i: int) -> ShardState:
        return self._all()[i]

    def pop(self) -> ShardState:
        return self._all().pop()

    def rotate(self, n: int) -> None:
        self._all().rotate(n)


class DoneShards:
    """The shards committed in this run: which (a bitmap over shard ids) and their totals, not every
    shard's stats (the ledger keeps what the index and the card need)."""

    def __init__(self) -> None:
        self.bits = np.zeros(0, bool)
        self.count = self.rows = self.samples = self.rejected = self.failed = 0

    def add(self, sid: int, stats: ShardStats) -> bool:
        """Count a committed shard; False when it was counted already (the first report is kept)."""
        if sid in self:
            return False
        if sid >= len(self.bits):
            self.bits = np.concatenate((self.bits, np.zeros(max(sid + 1 - len(self.bits), len(self.bits)), bool)))
        self.bits[sid] = True
        self.count += 1
        self.rows += stats.rows
        self.samples += stats.samples
        self.rejected += stats.rejected
        self.failed += stats.failed
        return True

    def __contains__(self, sid: object) -> bool:
        return isinstance(sid, (int, np.integer)) and 0 <= sid < len(self.bits) and bool(self.bits[sid])

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        return (int(i) for i in np.flatnonzero(self.bits))


class ShardBook:
    """The queue of shards and what became of each: done, quarantined, or still to do. A shard's
    ShardState lives from its first submission until it is committed (or for good when quarantined)."""

    def __init__(self, specs: Sequence[ShardSpec], limits: Limits):
        self.limits = limits
        self.states: dict[int, ShardState] = {}
        self.pending = ShardQueue(specs, self.states)
        self.done = DoneShards()
        self.quarantined: dict[int, ShardState] = {}
        self.failed_attempts = self.requeues = self.actor_deaths = self.moves = 0

    def take(self) -> ShardState | None:
        """The next shard to submit (its attempt counted), or None."""
        if not self.pending:
            return None
        st = self.pending.popleft()
        st.attempts += 1
        return st

    def succeeded(self, shard_id: int, stats: ShardStats) -> bool:
        """Record a committed shard; False when it was already reported (kept: the first)."""
        if not self.done.add(shard_id, stats):
            return False
        self.states.pop(shard_id, None)  # nothing is asked of a committed shard's attempts any more
        return True

    def failed(self, task: Task, error: str, kind: str = "exception") -> str:
        """An attempt raised (or timed out): "retry" (back of the queue) or "quarantine"."""
        st = self.states[task.spec.shard_id]
        st.failures += 1
        self.failed_attempts += 1
        st.errors.append({"attempt": task.attempt, "slot": task.slot.name, "kind": kind, "error": error})
        if st.failures >= self.limits.max_attempts:
            self.quarantined[st.spec.shard_id] = st
            return "quarantine"
        self.pending.append(st)
        return "retry"

    def lost(self, task: Task, error: str) -> str:
        """Its actor died: "requeue" (front of the queue, no failed attempt) or "quarantine" when the
        shard was the one running (blamed) during max_attempts deaths."""
        st, slot = self.states[task.spec.shard_id], task.slot
        if slot.blamed == task.spec.shard_id:
            st.deaths += 1
            slot.blamed = None
        st.errors.append({"attempt": task.attempt, "slot": slot.name, "kind": "actor_died", "error": error})
        if st.deaths >= self.limits.max_attempts:
            self.quarantined[st.spec.shard_id] = st
            return "quarantine"
        self.requeues += 1
        slot.requeued += 1
        self.pending.appendleft(st)
        return "requeue"

    def moved(self, task: Task) -> None:
        """Its queued attempt was cancelled to run on an idle actor: front of the queue. Not a failed
        attempt: ray.max_attempts counts failures and deaths, never a move."""
        st = self.states[task.spec.shard_id]
        st.moves += 1
        self.moves += 1
        self.pending.appendleft(st)

    def open(self, slots: list[Slot]) -> bool:
        """Work is left: a shard is queued or in flight."""
        return bool(self.pending) or any(s.inflight for s in slots)


def quarantine_record(st: ShardState) -> dict[str, Any]:
    s = st.spec
    return {"shard": s.shard_id, "name": s.name, "path": s.path, "row_start": s.row_start,
            "row_stop": s.row_stop, "attempts": st.attempts, "failures": st.failures,
            "actor_deaths": st.deaths, "moves": st.moves, "errors": st.errors}


def error_text(e: BaseException, limit: int = ERROR_CHARS) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else "..." + text[-limit:]


def last_line(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""

"""The driver's policy (pipeline/driver/policy.py) with fake events and a fake clock: no Ray.

Each test plays a sequence of events (submissions, results, deaths, probe answers, the clock
moving) and checks what the policy decided: retry, requeue, quarantine, blame, timeout, replace.
"""

from __future__ import annotations

from pipeline.driver import policy as P
from pipeline.records import ShardSpec, ShardStats


def specs(n: int) -> list[ShardSpec]:
    return [ShardSpec(i, "in.parquet", 2 * i, 2 * i + 2) for i in range(n)]


def ready_slot(name: str, now: float = 0.0) -> P.Slot:
    s = P.Slot(name)
    P.became_ready(s, {"pid": 1}, now)
    return s


def send(book: P.ShardBook, slot: P.Slot, now: float) -> P.Task:
    """What the executor does to submit: take the next shard, hand it to the slot."""
    st = book.take()
    task = P.Task(st.spec, slot, st.attempts, ref=object(), epoch=slot.epoch)
    P.submitted(slot, task, now)
    return task


def test_shards_go_to_the_least_loaded_ready_actor_within_the_limit():
    a, b, c = ready_slot("a"), ready_slot("b"), P.Slot("c")  # c is still starting
    book = P.ShardBook(specs(5), P.Limits(max_in_flight=2))
    picked = []
    while (slot := P.pick_slot([a, b, c], 2, len(book.pending))) is not None:
        picked.append(slot.name)
        send(book, slot, 0.0)
    assert picked == ["a", "b", "a", "b"]  # alternating, never the unready one, two each at most
    assert len(book.pending) == 1 and [t.spec.shard_id for t in a.inflight] == [0, 2]
    b.dead = True
    P.finished(a, a.inflight[0], 1.0)
    assert P.pick_slot([a, b, c], 2, 1) is None  # a is busy: the last shard is left for c, still starting
    c.dead = True
    assert P.pick_slot([a, b, c], 2, 1) is a


def test_shards_spread_over_the_actors_before_any_is_queued_behind_a_running_one():
    """The first actor ready does not take two of two shards while the second is still starting."""
    a, b = ready_slot("a"), P.Slot("b")
    book = P.ShardBook(specs(2), P.Limits(max_in_flight=2))
    assert P.pick_slot([a, b], 2, 2) is a  # an idle actor always takes one
    send(book, a, 0.0)
    assert P.pick_slot([a, b], 2, 1) is None  # queued behind shard 0, shard 1 would wait for it
    P.became_ready(b, {"pid": 2}, 0.12)
    assert P.pick_slot([a, b], 2, 1) is b
    send(book, b, 0.12)
    assert [[t.spec.shard_id for t in s.inflight] for s in (a, b)] == [[0], [1]]
    # more shards than starting actors: the ready one queues a second (prefetch), the rest stay pending
    a, b = ready_slot("a"), P.Slot("b")
    book = P.ShardBook(specs(5), P.Limits(max_in_flight=2))
    while (slot := P.pick_slot([a, b], 2, len(book.pending))) is not None:
        send(book, slot, 0.0)
    assert [t.spec.shard_id for t in a.inflight] == [0, 1] and len(book.pending) == 3


def test_a_queued_shard_moves_to_an_idle_actor_at_the_tail_and_the_move_is_no_failed_attempt():
    a, b = ready_slot("a"), ready_slot("b")
    book = P.ShardBook(specs(3), P.Limits(max_attempts=2, max_in_flight=2))
    running, queued = send(book, a, 0.0), send(book, a, 0.0)  # shard 1 waits behind shard 0 on a
    other = send(book, b, 0.0)
    assert P.to_move([a, b], len(book.pending)) is None  # nobody idles
    P.finished(b, other, 5.0)
    assert book.succeeded(2, ShardStats(2, 2, 2, 0, 0))
    book.pending.append(P.ShardState(ShardSpec(9, "in.parquet", 0, 2)))
    assert P.to_move([a, b], len(book.pending)) is None  # pending work goes to the idle actor first
    book.pending.pop()
    assert P.to_move([a, b], 0) == (queued, b)  # the queued one, never the running one
    P.moved(a, queued)
    book.moved(queued)
    assert a.live == [running] and a.running_since == 0.0  # a's running shard keeps its clock
    assert [st.spec.shard_id for st in book.pending] == [1]
    again = send(book, b, 5.0)
    assert (again.spec.shard_id, again.attempt) == (1, 2)  # a new attempt number: the cancelled one may have run
    assert P.to_move([a, b], 0) is None and b.running_since == 5.0
    st = book.states[1]
    assert (st.failures, st.deaths, st.moves, book.failed_attempts, book.moves) == (0, 0, 1, 0, 1)
    P.finished(b, again, 6.0)
    assert book.failed(again, "RuntimeError: boom") == "retry"  # 1 failure of max_attempts 2: the move is none
    assert P.quarantine_record(st)["moves"] == 1


def test_the_move_takes_from_the_actor_that_frees_last():
    a, b, c, idle = ready_slot("a"), ready_slot("b"), ready_slot("c"), ready_slot("idle")
    book = P.ShardBook(specs(6), P.Limits(max_in_flight=2))
    for slot, now in ((a, 1.0), (a, 1.0), (b, 3.0), (b, 3.0), (c, 2.0), (c, 2.0)):  # b's shard started last
        send(book, slot, now)
    task, to = P.to_move([a, b, c, idle], 0)
    assert (task.spec.shard_id, task.slot.name, to.name) == (3, "b", "idle")
    b.ready = False  # a restarting actor's shards come back through its death, not a move
    assert P.to_move([a, b, c, idle], 0)[0].slot is c
    idle.ready = False
    assert P.to_move([a, b, c, idle], 0) is None  # no idle ready actor


def test_a_failing_shard_is_retried_at_the_back_then_quarantined():
    book = P.ShardBook(specs(3), P.Limits(max_attempts=2))
    slot = ready_slot("a")
    t = send(book, slot, 0.0)
    P.finished(slot, t, 1.0)
    assert book.failed(t, "RuntimeError: boom") == "retry"
    assert [st.spec.shard_id for st in book.pending] == [1, 2, 0]  # back of the queue
    while book.pending[0].spec.shard_id != 0:  # the others succeed
        other = send(book, slot, 2.0)
        P.finished(slot, other, 3.0)
        assert book.succeeded(other.spec.shard_id, ShardStats(other.spec.shard_id, 2, 2, 0, 0))
    t = send(book, slot, 4.0)
    assert t.attempt == 2
    P.finished(slot, t, 5.0)
    assert book.failed(t, "RuntimeError: boom again") == "quarantine"
    st = book.quarantined[0]
    assert (st.attempts, st.failures, st.deaths, book.failed_attempts) == (2, 2, 0, 2)
    rec = P.quarantine_record(st)
    assert rec["shard"] == 0 and [e["kind"] for e in rec["errors"]] == ["exception", "exception"]
    assert not book.open([slot]) and set(book.done) == {1, 2}


def test_an_actor_death_blames_only_the_running_shard():
    book = P.ShardBook(specs(4), P.Limits(max_attempts=2, max_in_flight=2))
    slot = ready_slot("a")
    running, queued = send(book, slot, 0.0), send(book, slot, 0.0)
    # Ray's view when the death is noticed: the first task died with the actor, the second never ran
    blamed = P.running_task(slot, {id(running): "died", id(queued): "unknown"})
    assert blamed is running
    P.died(slot, blamed, 1.0)
    book.actor_deaths += 1
    assert not slot.ready and slot.epoch == 1 and slot.blamed == 0
    for t in (running, queued):  # both results arrive as actor errors
        P.finished(slot, t, 1.0)
        assert book.lost(t, "ActorDiedError") == "requeue"
    # both requeued at the front, in the order they come back; neither counts a failed attempt
    assert [st.spec.shard_id for st in book.pending][:2] == [1, 0]
    assert book.states[0].deaths == 1 and book.states[1].deaths == 0
    assert book.failed_attempts == 0 and book.requeues == 2 and slot.requeued == 2
    # the restarted actor dies on shard 0 again: poison, quarantined; shard 1 is not blamed
    P.became_ready(slot, {"pid": 2}, 2.0)
    book.pending.rotate(-1)  # shard 0 first
    t = send(book, slot, 2.0)
    P.died(slot, P.running_task(slot, {id(t): "died"}), 3.0)
    P.finished(slot, t, 3.0)
    assert book.lost(t, "ActorDiedError") == "quarantine"
    assert book.states[0].deaths == 2 and book.states[0].failures == 0 and 0 in book.quarantined


def test_a_task_that_finished_by_raising_is_not_blamed_for_a_death():
    book = P.ShardBook(specs(3), P.Limits())
    slot = ready_slot("a")
    raised, running, queued = send(book, slot, 0.0), send(book, slot, 0.0), send(book, slot, 0.0)
    assert P.running_task(slot, {id(raised): "raised", id(running): "unknown", id(queued): "unknown"}) is running
    assert P.running_task(slot, {id(raised): "ok", id(running): "ok", id(queued): "ok"}) is None
    P.died(slot, running, 1.0)  # late news of the old incarnation's tasks concern no live task
    assert slot.live == [] and P.running_task(slot, {}) is None


def test_a_committed_shard_whose_result_went_down_with_its_actor_is_not_blamed_for_the_death():
    """On a loaded host the actor commits shard 0, starts shard 1 and dies in it before shard 0's reply
    has left it: Ray reports both as lost with the actor. Shard 0's commit file says it had finished."""
    book = P.ShardBook(specs(3), P.Limits(max_attempts=2))
    slot = ready_slot("a")
    done, running, queued = send(book, slot, 0.0), send(book, slot, 0.0), send(book, slot, 0.0)
    status = {id(done): "died", id(running): "died", id(queued): "unknown"}
    assert P.running_task(slot, status) is done  # without the commit files: the oldest unsure one
    assert P.running_task(slot, status, committed={0}.__contains__) is running
    assert P.running_task(slot, status, committed={0, 1}.__contains__) is queued
    P.died(slot, P.running_task(slot, status, committed={0}.__contains__), 1.0)
    for t in (running, queued):
        P.finished(slot, t, 1.0)
        book.lost(t, "ActorUnavailableError")
    assert book.states[1].deaths == 1 and book.states[2].deaths == 0 and book.states[0].deaths == 0


def test_timeout_counts_from_when_a_shard_starts_running():
    book = P.ShardBook(specs(2), P.Limits(shard_timeout_s=10.0))
    slot = ready_slot("a")
    first = send(book, slot, 0.0)
    second = send(book, slot, 1.0)  # queued behind the first: its clock has not started
    assert P.overdue(slot, 10.0, 10.0) is None
    assert P.overdue(slot, 10.5, 10.0) is first
    P.finished(slot, first, 8.0)  # (had the first finished at t=8, the second starts running then)
    assert slot.running_since == 8.0
    assert P.overdue(slot, 17.9, 10.0) is None and P.overdue(slot, 18.1, 10.0) is second
    assert P.overdue(slot, 1e9, 0.0) is None  # 0: no timeout
    slot.ready = False  # restarting actors are not timed
    assert P.overdue(slot, 1e9, 10.0) is None
    slot.ready = True
    assert book.failed(second, "no result after 10s", kind="timeout") == "retry"
    assert book.states[1].errors[-1]["kind"] == "timeout"


def test_probe_errors_decide_dead_replace_or_wait():
    limits = P.Limits(unavailable_limit_s=100.0)
    slot = P.Slot("a", down_since=0.0)
    assert P.after_probe_error(slot, init_failed=True, gone_for_good=False, now=1.0, limits=limits) == "dead"
    assert P.after_probe_error(slot, init_failed=False, gone_for_good=True, now=1.0, limits=limits) == "replace"
    assert P.after_probe_error(slot, init_failed=False, gone_for_good=False, now=50.0, limits=limits) == "wait"
    assert P.after_probe_error(slot, init_failed=False, gone_for_good=False, now=101.0, limits=limits) == "replace"
    delays = [P.next_probe_delay(slot) for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]  # doubling, capped
    P.became_ready(slot, {}, 200.0)
    assert slot.probe_delay == 0.0 and slot.down_since is None and slot.ready_at == 200.0


def test_replacements_are_budgeted():
    slot = ready_slot("a")
    epoch = slot.epoch
    assert P.replace_actor(slot, budget=1, now=5.0)
    assert (slot.replacements, slot.epoch, slot.ready, slot.down_since) == (1, epoch + 1, False, 5.0)
    book = P.ShardBook(specs(1), P.Limits(shard_timeout_s=1.0))
    P.became_ready(slot, {}, 6.0)
    send(book, slot, 6.0)
    assert not P.replace_actor(slot, budget=0, now=6.0) and slot.dead and not slot.ready
    assert P.overdue(slot, 100.0, 1.0) is None  # a dead slot's queued shards are not timed


def test_a_shard_reported_twice_keeps_the_first():
    book = P.ShardBook(specs(1), P.Limits())
    first, again = ShardStats(0, 2, 2, 0, 0, attempt=1), ShardStats(0, 2, 1, 1, 0, attempt=2)
    assert book.succeeded(0, first) and not book.succeeded(0, again)
    assert (len(book.done), book.done.rows, book.done.samples, book.done.rejected) == (1, 2, 2, 0)  # the first
    assert 0 in book.done and list(book.done) == [0] and 0 not in book.states

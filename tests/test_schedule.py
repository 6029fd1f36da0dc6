"""tests/schedule.py's RayOnOneWorker (how the xdist workers share the suite), driven the way xdist's
controller drives it: each worker is told its collection, runs the first test it holds once it holds two
(or once it is shut down), and reports it done. The workers are stand-ins that record what they were sent;
the clock is simulated from each test's duration."""

from __future__ import annotations

import heapq
import types

from schedule import RayOnOneWorker


class Worker:
    """What the scheduler uses of xdist's WorkerController: it sends tests and shuts the worker down."""

    def __init__(self, name: str):
        self.name, self.held, self.ran, self.shutting_down = name, [], [], False
        self.gateway = types.SimpleNamespace(id=name)  # named in xdist's collection check

    def send_runtest_some(self, indices):
        self.held.extend(indices)

    def shutdown(self):
        self.shutting_down = True


def run(collection: list[str], duration, n_workers: int, request, monkeypatch) -> list[Worker]:
    monkeypatch.setattr(request.config.option, "tx", [f"{n_workers}*popen"], raising=False)  # as `-n N` sets it
    sched = RayOnOneWorker(request.config)
    workers = [Worker(f"gw{i}") for i in range(n_workers)]
    for w in workers:
        sched.add_node(w)
        sched.add_node_collection(w, collection)
    sched.schedule()
    clock, running = 0.0, []  # (ends at, worker name) of the test each worker runs
    busy: dict[str, int] = {}
    while True:
        for w in workers:
            if w.name not in busy and w.held and (len(w.held) >= 2 or w.shutting_down):
                busy[w.name] = w.held[0]
                heapq.heappush(running, (clock + duration(collection[w.held[0]]), w.name))
        if not running:
            break
        clock, name = heapq.heappop(running)
        w = next(x for x in workers if x.name == name)
        index = busy.pop(name)
        w.held.remove(index)
        w.ran.append(collection[index])
        sched.mark_test_complete(w, index)
    assert sched.tests_finished and not sched.has_pending
    assert all(w.shutting_down and not w.held for w in workers)
    return workers


PINNED = ["t/test_cli.py::private@ray_pinned", "t/test_chaos.py::driver_kill@ray_pinned",
          "t/test_ray_cluster.py::two_nodes@ray_pinned"]
SHARED = [f"t/test_generate.py::job{i}@ray" for i in range(4)]
MODULES = {m: [f"t/{m}::t{i}" for i in range(4)] for m in ("test_a.py", "test_b.py", "test_c.py")}
COLLECTION = [*MODULES["test_a.py"], *MODULES["test_b.py"], *MODULES["test_c.py"],
              *PINNED, *SHARED]


def test_every_test_runs_once_and_the_ray_worker_keeps_the_pinned_ones_in_order(request, monkeypatch):
    for n in (1, 2, 3):
        for ray_s, other_s in ((10, 1), (1, 10), (3, 3)):
            workers = run(COLLECTION, lambda t, r=ray_s, o=other_s: r if "@ray" in t else o, n, request, monkeypatch)
            ran = [t for w in workers for t in w.ran]
            assert sorted(ran) == sorted(COLLECTION), (n, ray_s, other_s)
            pinned = [t for t in workers[0].ran if t.endswith("@ray_pinned")]
            assert workers[0].ran[:len(PINNED)] == pinned == PINNED  # on the Ray worker first, in conftest's order


def test_the_ray_worker_runs_beside_the_other_and_each_helps_from_the_far_end(request, monkeypatch):
    # long Ray tests: the other worker runs every in-process test, front first, then the last shared ones
    # but one: the Ray worker keeps the last Ray test left (a helper holding it could end after it)
    ray_worker, other = run(COLLECTION, lambda t: 10 if "@ray" in t else 1, 2, request, monkeypatch)
    assert other.ran[:12] == [t for t in COLLECTION if "@ray" not in t]
    assert other.ran[12:] == SHARED[::-1][:len(other.ran) - 12] and 12 < len(other.ran) < 12 + len(SHARED)
    assert ray_worker.ran == [*PINNED, *SHARED[:len(SHARED) - (len(other.ran) - 12)]]
    # the pinned tests far longer still: the other worker would take every shared one, but the last is kept
    ray_worker, other = run(COLLECTION, lambda t: 30 if "pinned" in t else 10 if "@ray" in t else 1, 2, request,
                            monkeypatch)
    assert other.ran[12:] == SHARED[:0:-1] and ray_worker.ran == [*PINNED, SHARED[0]]
    # long in-process tests: once its Ray tests are done the Ray worker takes a whole module from the back
    ray_worker, other = run(COLLECTION, lambda t: 1 if "@ray" in t else 10, 2, request, monkeypatch)
    assert other.ran[:4] == MODULES["test_a.py"]
    assert ray_worker.ran[7:11] == MODULES["test_c.py"]
    assert not set(other.ran) & set(MODULES["test_c.py"])  # no module run in both workers but the last one


def test_a_ray_test_a_crashed_helper_held_goes_to_its_replacement_once_the_ray_worker_is_done(request, monkeypatch):
    """The helper holds two shared-head tests and crashes in the first after the Ray worker, out of Ray
    tests, was shut down: the second goes back to the Ray list, and the worker xdist starts in the
    crashed one's place takes it (the Ray worker keeps the last Ray test only while it can still run it)."""
    collection = ["t/test_a.py::t0", "t/test_a.py::t1", PINNED[0], *SHARED]
    monkeypatch.setattr(request.config.option, "tx", ["2*popen"], raising=False)
    sched = RayOnOneWorker(request.config)
    ray_worker, helper = Worker("gw0"), Worker("gw1")
    for w in (ray_worker, helper):
        sched.add_node(w)
        sched.add_node_collection(w, collection)
    sched.schedule()
    index = {t: i for i, t in enumerate(collection)}

    def done(w: Worker, t: str) -> None:
        w.held.remove(index[t])
        sched.mark_test_complete(w, index[t])

    assert ray_worker.held == [index[PINNED[0]], index[SHARED[0]]]
    for t in ("t/test_a.py::t0", "t/test_a.py::t1"):  # the helper's own tests done: it takes s3, then s2
        done(helper, t)
    assert helper.held == [index[SHARED[3]], index[SHARED[2]]]
    for t in (PINNED[0], SHARED[0]):  # the Ray worker runs on, takes s1, the last, and is shut down
        done(ray_worker, t)
    assert ray_worker.held == [index[SHARED[1]]] and ray_worker.shutting_down
    assert sched.remove_node(helper) == SHARED[3]  # crashed in s3
    clone = Worker("gw2")
    sched.add_node(clone)
    sched.add_node_collection(clone, collection)
    sched.schedule()
    assert clone.held == [index[SHARED[2]]] and clone.shutting_down  # it runs s2, then stops

"""How the pytest-xdist workers share the suite: the Ray tests on one worker, the rest beside it.

conftest marks each test that uses Ray with `xdist_group("ray")` (a test on the shared head) or
`xdist_group("ray_pinned")` (one that must run where conftest's order puts it: before the shared head
starts, or first on it); under pyproject's `--dist loadgroup` xdist appends "@ray" or "@ray_pinned" to
their ids, and conftest's `pytest_xdist_make_scheduler` hands the run to `RayOnOneWorker` below instead of
xdist's own scheduler.

Why: a Ray test spends much of its wall time waiting (a job's or an actor's start, the timeout it tests,
a fault's moment). Two of them side by side leave both cores idle; beside a test that computes, the wait
costs nothing. So the first worker runs the Ray tests in conftest's order while the other worker takes
the other tests from the front of the list. Whichever runs out first helps from the back: the first
worker takes the other tests a module at a time (the two meet in one module, so no other module's
fixtures are made twice), the other worker takes the "@ray" tests on a head of its own (all but the
last one while the Ray worker can still run it). Each worker is kept two tests ahead: xdist runs a test
once it knows the next one (for its fixtures' teardown).
"""

from __future__ import annotations

from xdist.scheduler import LoadScheduling

RAY, PINNED = "@ray", "@ray_pinned"  # a test on the shared head; one that must run where conftest put it


class RayOnOneWorker(LoadScheduling):
    def __init__(self, config, log=None):
        super().__init__(config, log)
        self.ray: list[int] = []  # indices of the Ray tests not yet sent, in run order
        self.ray_node = None
        self.module_of: dict = {}  # worker -> the module whose tests it takes

    def schedule(self) -> None:
        assert self.collection_is_completed
        if self.collection is None:
            if not self._check_nodes_have_same_collection():
                self.log("**Different tests collected, aborting run**")
                return
            self.collection = next(iter(self.node2collection.values()))
            ids = list(enumerate(self.collection))
            self.ray = [i for i, nodeid in ids if nodeid.endswith((RAY, PINNED))]
            self.pending[:] = [i for i, nodeid in ids if not nodeid.endswith((RAY, PINNED))]
            self.ray_node = self.nodes[0]
        for node in self.nodes:
            self.check_schedule(node)

    def check_schedule(self, node, duration: float = 0) -> None:
        if node.shutting_down:
            return
        if self.ray_node is None and self.ray:
            self.ray_node = node
        queue = self.node2pending[node]
        while len(queue) < 2 and (i := self._next_for(node)) is not None:
            queue.append(i)
            node.send_runtest_some([i])
        if not self.pending and not (node is self.ray_node and self.ray) and self._movable() is None:
            node.shutdown()  # it runs what it holds, then stops

    def _next_for(self, node) -> int | None:
        if node is self.ray_node and self.ray:
            return self.ray.pop(0)
        if self.pending:
            return self.pending.pop(self._next_other(node))
        j = self._movable()  # only Ray tests are left: help from the back, on this worker's own head
        return None if j is None else self.ray.pop(j)

    def _next_other(self, node) -> int:
        """Where in `pending` this worker's next test is: the next one of its module; else the first test
        of the nearest module at its end of the list that no other worker is in; else the last one."""
        modules = [self._module(i) for i in self.pending]
        if node in self.module_of and self.module_of[node] in modules:
            return modules.index(self.module_of[node])
        taken = {m for n, m in self.module_of.items() if n is not node}
        ends = range(len(modules)) if self._from_front(node) else range(len(modules) - 1, -1, -1)
        for j in ends:
            if modules[j] not in taken:
                self.module_of[node] = modules[j]
                return modules.index(modules[j])
        return len(modules) - 1

    def _from_front(self, node) -> bool:
        """The first worker without Ray tests starts at the front, the next at the back, and so on; the
        Ray worker, once its Ray tests are done, works from the back."""
        others = [n for n in self.nodes if n is not self.ray_node]
        return node in others and others.index(node) % 2 == 0

    def _movable(self) -> int | None:
        """The last Ray test not pinned to the Ray worker (which keeps the order conftest gave those), but
        not the last one left while the Ray worker can still run it: it does so on its started head in the
        time another worker would take to start a head of its own (each holds two tests, so a helper that
        took it could end a whole test after the Ray worker, as seen in a suite run). A Ray worker that is
        shutting down runs nothing more (after a helper's crash): then anyone takes it."""
        if len(self.ray) < 2 and self.ray_node is not None and not self.ray_node.shutting_down:
            return None
        return next((j for j in range(len(self.ray) - 1, -1, -1) if self.collection[self.ray[j]].endswith(RAY)),
                    None)

    def _module(self, index: int) -> str:
        return self.collection[index].split("::", 1)[0]

    @property
    def has_pending(self) -> bool:
        return bool(self.ray) or super().has_pending

    @property
    def tests_finished(self) -> bool:
        return not self.ray and super().tests_finished

    def remove_node(self, node):
        """A worker gone: the first live worker to ask takes over the Ray tests; a crashed worker's queued Ray
        tests go back to the front of the Ray list (not among the others)."""
        if node is self.ray_node:
            self.ray_node = None
        queue = self.node2pending.get(node, [])
        if len(queue) > 1:  # crashed: queue[0] is the test it crashed in
            self.ray[:0] = [i for i in queue[1:] if self.collection[i].endswith((RAY, PINNED))]
            queue[1:] = [i for i in queue[1:] if not self.collection[i].endswith((RAY, PINNED))]
        return super().remove_node(node)

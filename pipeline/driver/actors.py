"""Ray wiring around the plain workers: the sampler actor, the captioner actor, the remote captioner.

The classes here are plain Python; `new_sampler` and `start_captioners` apply `ray.remote(...)` with
the resources from the config. They live in the package so that actors on any node import them by
name from the shipped code. `ray` is imported inside functions only, so importing this module costs
nothing; pipeline/worker.py never imports it.

- `SamplerActor` holds one `ShardWorker` (or the test double passed as `worker_cls`). Ray's GPU
  assignment (CUDA_VISIBLE_DEVICES, `ray.get_gpu_ids()`) is what pins it; without a GPU it runs
  the worker on CPU. `run()` returns the shard's small stats plus who ran it.
- `CaptionerActor` holds one `Captioner` (BLIP-2); `RemoteCaptioner` is the callable handed to the
  sampler workers in its place: it sends batches round-robin over the captioner actors.
"""

from __future__ import annotations

import gc
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from pipeline.config import Config
from pipeline.records import ShardSpec, ShardStats
from pipeline.sampling.methods import needs_captioner


def ray_identity() -> dict[str, Any]:
    """Where the calling actor runs: node, GPUs Ray assigned to it, process."""
    import ray

    ctx = ray.get_runtime_context()
    return {
        "node_id": ctx.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "actor_id": ctx.get_actor_id(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def worker_label(slot: str, ident: dict[str, Any]) -> str:
    """The ShardStats.worker string: actor slot, node, GPU(s) and pid (per-GPU throughput)."""
    gpus = ",".join(ident["gpu_ids"]) or "cpu"
    return f"{slot} node={ident['node_ip']}/{ident['node_id'][:12]} gpu={gpus} pid={ident['pid']}"


@contextmanager
def outside_gc() -> Iterator[None]:
    """An actor's models built with the cyclic garbage collector paused, then frozen out of its sight.
    Importing torch, diffusers and transformers and loading the models makes ~0.5 M objects that live as
    long as the actor; the collector walked them again and again while they were made (a tiny-model
    actor's start, measured: 5.7 -> 5.1 CPU-s) and would walk them all in every full collection after.
    One collection before the freeze, so that no garbage cycle made meanwhile (a traceback, a loader's
    temporaries and the tensors they hold) is kept; frozen objects are still freed by reference counting
    when dropped."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        if enabled:
            gc.enable()


def shard_worker(cfg: Config, captioner: Any = None, name: str = ""):
    """The sampler actors' default worker: pipeline.worker.ShardWorker, imported in the actor (this
    function travels by reference), so that the driver never imports torch and the model libraries
    (~1.5 s and ~180 MB of driver memory)."""
    from pipeline.worker import ShardWorker

    return ShardWorker(cfg, captioner=captioner, name=name)


class SamplerActor:
    """One sampler worker per actor (per GPU). Thin: everything real happens in `worker_cls`.

    Shards run one at a time (the default concurrency group); `progress` answers beside them."""

    def __init__(self, worker_cls: type, cfg: Config, slot: str, captioner: Any = None):
        self.ident = ray_identity()
        self.slot = slot
        if not self.ident["gpu_ids"] and cfg.model.device == "auto":
            # No GPU assigned by Ray: run on CPU even if the node has GPUs (they belong to others).
            cfg = replace(cfg, model=replace(cfg.model, device="cpu"))
        with outside_gc():
            self.worker = worker_cls(cfg, captioner=captioner, name=worker_label(slot, self.ident))

    def describe(self) -> dict[str, Any]:
        """The worker's own description plus Ray's view; doubles as the readiness probe."""
        info = dict(self.worker.describe()) if hasattr(self.worker, "describe") else {}
        captioner = getattr(self.worker, "captioner", None)
        info.update(self.ident, slot=self.slot, captioner=type(captioner).__name__ if captioner else None)
        return info

    def run(self, spec: ShardSpec, attempt: int = 1) -> tuple[ShardStats, dict[str, Any]]:
        return self.worker.run(spec, attempt), {"slot": self.slot, **self.ident}

    def progress(self) -> dict[str, int] | None:
        """How far the running shard is ({shard, rows, samples}), or None; called in the STATUS
        concurrency group, so it answers while run() works."""
        return self.worker.progress() if hasattr(self.worker, "progress") else None


class CaptionerActor:
    """BLIP-2 captioning on the GPU (fraction) Ray assigned, or on CPU without one.

    `busy_s` runs in its own concurrency group (STATUS), so it answers while a caption call runs:
    how long the current call has been running tells a hung actor from a busy one.
    """

    def __init__(self, cfg: Config, captioner: Any = None):
        import ray

        if captioner is None:
            with outside_gc():
                from pipeline.models.captioner import Captioner

                captioner = Captioner(cfg.captioner, "cuda" if ray.get_gpu_ids() else "cpu")
        self.captioner = captioner  # images -> captions (tests pass a stand-in)
        self.ident = ray_identity()
        self.busy_since: float | None = None

    def describe(self) -> dict[str, Any]:
        return dict(self.ident)

    def caption(self, images: list) -> list[str]:
        self.busy_since = time.monotonic()
        try:
            return self.captioner(images)
        finally:
            self.busy_since = None

    def busy_s(self) -> float | None:
        """Seconds the running caption call has taken so far; None when idle."""
        since = self.busy_since
        return None if since is None else time.monotonic() - since


STATUS = "status"  # the actors' concurrency group for busy_s and progress
STATUS_TIMEOUT_S = 30.0  # an actor that cannot answer busy_s this long is frozen


class RemoteCaptioner:
    """`captioner(images) -> captions` over a pool of CaptionerActor handles.

    Images go out in chunks of `batch_size`, chunk i to actor (offset + i) mod n, all chunks in
    flight at once; captions come back in input order. A chunk whose actor died is sent to the next
    actor, at most `retries` times. When a chunk has no answer after `timeout_s` (0: no limit), its
    actor is asked how long its current call has run: a call past `timeout_s`, or no answer at all,
    means the actor hangs; it is killed so that Ray restarts it, and the chunk goes to the next
    actor. An actor that is merely busy with other samplers' chunks is waited for.
    """

    def __init__(self, handles: list, batch_size: int, offset: int = 0, retries: int = 3, timeout_s: float = 0.0):
        if not handles:
            raise ValueError("RemoteCaptioner needs at least one captioner actor")
        self.handles, self.batch_size, self.retries = list(handles), max(1, batch_size), retries
        self.timeout_s = timeout_s or None
        self._next = offset % len(self.handles)

    def __call__(self, images: list) -> list[str]:
        chunks = [list(images[i:i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        sent = [self._submit(c) for c in chunks]
        return [c for chunk, first in zip(chunks, sent) for c in self._result(chunk, *first)]

    def _result(self, chunk: list, handle: Any, ref: Any) -> list[str]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        attempt = 0
        while True:
            try:
                return ray.get(ref, timeout=self.timeout_s)
            except GetTimeoutError:
                if not self._hung(handle):
                    continue  # busy with other chunks, its current call within the limit: wait on
                ray.kill(handle, no_restart=False)  # Ray restarts it
                if attempt == self.retries:
                    raise TimeoutError(f"no captions from the captioner actors within {self.timeout_s:g}s, "
                                       f"{self.retries + 1} tries (captioner.timeout_s)") from None
            except RayActorError:
                if attempt == self.retries:
                    raise
            attempt += 1
            handle, ref = self._submit(chunk)

    def _hung(self, handle: Any) -> bool:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            busy = ray.get(handle.busy_s.options(concurrency_group=STATUS).remote(), timeout=STATUS_TIMEOUT_S)
        except (GetTimeoutError, RayActorError):
            return True  # frozen, or gone
        return busy is not None and busy > self.timeout_s

    def _submit(self, chunk: list):
        handle = self.handles[self._next]
        self._next = (self._next + 1) % len(self.handles)
        return handle, handle.caption.remote(chunk)


def new_sampler(cfg: Config, rc: Any, worker_cls: type, slot: str, captioner: Any):
    """A SamplerActor holding `worker_cls(cfg, captioner=..., name=...)`; Ray restarts it on a crash."""
    import ray

    return ray.remote(concurrency_groups={STATUS: 1})(SamplerActor).options(
        num_gpus=cfg.ray.gpus_per_worker, num_cpus=cfg.ray.cpus_per_worker,
        max_restarts=cfg.ray.max_actor_restarts, max_task_retries=0, scheduling_strategy="SPREAD",
        runtime_env=rc.runtime_env or None).remote(worker_cls, cfg, slot, captioner)


def start_captioners(cfg: Config, rc: Any) -> list:
    """`captioner.workers` CaptionerActors when a method of the run captions (else none: the sampler
    workers caption in-process when captioner.workers is 0)."""

    if not (needs_captioner(cfg) and cfg.captioner.workers > 0):
        return []
    remote = captioner_actor_class().options(
        num_gpus=cfg.captioner.gpus_per_worker, num_cpus=0, max_restarts=cfg.ray.max_actor_restarts,
        max_task_retries=cfg.ray.max_actor_restarts, runtime_env=rc.runtime_env or None)
    return [remote.remote(cfg) for _ in range(cfg.captioner.workers)]


def captioner_actor_class():
    """CaptionerActor as a Ray actor class: caption calls one at a time, busy_s beside them."""
    import ray

    return ray.remote(concurrency_groups={STATUS: 1})(CaptionerActor)


def remote_captioner(cfg: Config, handles: list, offset: int) -> RemoteCaptioner | None:
    """The captioner handed to one sampler worker: the pool of captioner actors, or None."""
    if not handles:
        return None
    return RemoteCaptioner(handles, cfg.captioner.batch_size, offset=offset,
                           retries=max(1, cfg.ray.max_actor_restarts), timeout_s=cfg.captioner.timeout_s)

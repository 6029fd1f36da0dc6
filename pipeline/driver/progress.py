"""Progress of a run, shown as it goes: rows done of the total (each a sample or a recorded
rejection), samples/s overall and per sampler actor, failed attempts, quarantined shards, ETA.
With the quality gate (gate.rules) it also counts the tries (images sampled) beside the samples kept.

On a terminal it is one live tqdm bar, redrawn every second (log lines print above it). Anywhere else
(`ray job submit` logs, a file, CI) it is one plain log line every `logging.progress_interval_s`:
no carriage returns or escape codes. Rows of running shards count as they are written (each sampler
actor reports how far its shard is), so a long shard moves the figures before it commits.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from pipeline.records import ShardStats

log = logging.getLogger(__name__)
TTY_REFRESH_S = 1.0


def fmt_eta(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Counts what this run committed plus what running shards wrote; rates count from the first
    actor ready."""

    def __init__(self, total_rows: int, rows_before: int, interval_s: float, stream: TextIO | None = None,
                 stall_s: float = 0.0):
        self.total_rows, self.rows_before = total_rows, rows_before
        self.rows_done = self.samples_done = self.tries_done = 0
        self.gated = False  # a shard reported tries: the run has a quality gate
        self.stall_s = stall_s
        self.moved_at = self.stall_warned_at = time.monotonic()  # last new row or ready actor; last warning
        # slot -> (shard, rows, samples, tries) written so far
        self.running: dict[str, tuple[int, int, int, int]] = {}
        self.first_ready: float | None = None
        stream = stream or sys.stdout
        self.bar = None
        if stream.isatty():
            from tqdm import tqdm

            # Our own ETA and rates (from committed and running shards) in the postfix, not tqdm's.
            self.bar = tqdm(total=total_rows, initial=rows_before, file=stream, dynamic_ncols=True, mininterval=0,
                            bar_format="{percentage:3.0f}%|{bar}| {n}/{total} rows [{elapsed}{postfix}]",
                            postfix="starting the sampler actors")
        self.interval_s = TTY_REFRESH_S if self.bar is not None else interval_s
        self.next_at = time.monotonic() + self.interval_s

    @contextlib.contextmanager
    def showing(self) -> Iterator[None]:
        """While the run goes: on a terminal, log lines print above the bar; the bar closes after."""
        if self.bar is None:
            yield
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        try:
            with logging_redirect_tqdm(loggers=[logging.getLogger()], tqdm_class=type(self.bar)):
                yield
        finally:
            self.bar.close()

    def started(self) -> None:
        """An actor is ready: sampling may begin (the rates count from the first one)."""
        self.first_ready = self.first_ready or time.monotonic()
        self.moved_at = time.monotonic()

    def update(self, slot: str, shard: int, rows: int, samples: int, tries: int | None = None) -> None:
        """What the shard running on `slot` has written so far (its actor's answer to a poll); `tries`:
        the images its gate has sampled (None without a gate)."""
        now = (shard, rows, samples, tries or 0)
        before = self.running.get(slot, (None, 0, 0, 0))
        if (before[0], before[1], before[3]) != (shard, rows, now[3]):  # a row written or an image sampled
            self.moved_at = time.monotonic()
        self.gated = self.gated or tries is not None
        self.running[slot] = now

    def add(self, stats: ShardStats, slot: str | None = None) -> None:
        """A shard committed: its rows move from running to done."""
        self.moved_at = time.monotonic()
        self.rows_done += stats.rows
        self.samples_done += stats.samples
        gate = (stats.extra or {}).get("gate")
        if gate:
            self.gated = True
            self.tries_done += sum(gate.get("tried", []))
        if slot is not None and self.running.get(slot, (None,))[0] == stats.shard_id:
            del self.running[slot]

    def stopped(self, slot: str, shard: int) -> None:
        """The shard failed on `slot` or its actor died: what it wrote does not count."""
        if self.running.get(slot, (None,))[0] == shard:
            del self.running[slot]

    @property
    def sampling_s(self) -> float:
        return time.monotonic() - self.first_ready if self.first_ready else 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.next_at

    def figures(self, book: Any, slots: list) -> dict[str, Any]:
        """The numbers shown (book: policy.ShardBook, slots: policy.Slot)."""
        now = time.monotonic()
        elapsed = max(now - (self.first_ready or now), 1e-9)
        live_rows = sum(r for _, r, _, _ in self.running.values())
        live_samples = sum(s for _, _, s, _ in self.running.values())
        rows = self.rows_done + live_rows
        samples = self.samples_done + live_samples
        tries = self.tries_done + sum(t for *_, t in self.running.values())
        remaining = self.total_rows - self.rows_before - rows - sum(
            st.spec.num_rows for st in book.quarantined.values())
        rate_rows = rows / elapsed
        per = {}
        for s in slots:
            live = self.running.get(s.name, (0, 0, 0, 0))[2]
            per[s.name] = (s.samples + live) / max(now - s.ready_at, 1e-9) if s.ready_at else 0.0
        still = now - self.moved_at
        stalled = bool(self.stall_s) and still >= self.stall_s and now - self.stall_warned_at >= self.stall_s
        return {"stalled_s": still if stalled else None,
                "rows_done": self.rows_before + rows, "rows_total": self.total_rows, "samples": samples,
                "tries": tries if self.gated else None,
                "samples_per_s": samples / elapsed, "eta_s": remaining / rate_rows if rate_rows > 0 else None,
                "per_worker": per, "actors_ready": sum(s.ready for s in slots), "actors": len(slots),
                "failed_attempts": book.failed_attempts, "quarantined": len(book.quarantined),
                # an actor runs one shard at a time: the others sent to it wait there, queued
                "shards_done": len(book.done), "shards_running": sum(bool(s.live) for s in slots),
                "shards_queued": len(book.pending) + sum(max(len(s.live) - 1, 0) for s in slots)}

    def report(self, book: Any, slots: list) -> dict[str, Any]:
        """Show the figures (bar or log line) and return them; `stalled_s` is set (once per stall period)
        when nothing moved for `stall_s`: the caller says what is running."""
        self.next_at = time.monotonic() + self.interval_s
        f = self.figures(book, slots)
        if f["stalled_s"] is not None:
            self.stall_warned_at = time.monotonic()
        rates = " ".join(f"{k} {v:.2f}/s" for k, v in f["per_worker"].items())
        kept = f" kept of {f['tries']} tries" if f["tries"] is not None else ""
        tail = (f"{f['samples']} samples{kept}, {f['samples_per_s']:.3f} samples/s [{rates}], "
                f"failed attempts {f['failed_attempts']}, quarantined {f['quarantined']}")
        if self.bar is not None:
            self.bar.n = f["rows_done"]
            self.bar.set_postfix_str(f"ETA {fmt_eta(f['eta_s'])}, {tail}, actors {f['actors_ready']}/{f['actors']}",
                                     refresh=False)
            self.bar.refresh()
        else:
            pct = 100.0 * f["rows_done"] / self.total_rows if self.total_rows else 100.0
            log.info("progress: rows %d/%d (%.1f%%), %s, ETA %s | shards %d done %d running %d queued | "
                     "actors ready %d/%d", f["rows_done"], self.total_rows, pct, tail, fmt_eta(f["eta_s"]),
                     f["shards_done"], f["shards_running"], f["shards_queued"], f["actors_ready"], f["actors"])
        return f

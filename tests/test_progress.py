"""The driver's progress display (pipeline/driver/progress.py) with fake shard books and slots: a
live bar on a terminal, plain log lines elsewhere, running shards counted before they commit."""

from __future__ import annotations

import io
import logging

from pipeline.driver.policy import Limits, ShardBook, Slot
from pipeline.driver.progress import Progress
from pipeline.records import ShardSpec, ShardStats


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def book_and_slots(now: float) -> tuple[ShardBook, list[Slot]]:
    specs = [ShardSpec(i, "p.parquet", 10 * i, 10 * i + 10) for i in range(4)]
    book = ShardBook(specs, Limits(max_attempts=2, max_in_flight=1, shard_timeout_s=0, replacements=1))
    slots = [Slot("sampler-0", ready=True, ready_at=now - 10), Slot("sampler-1", ready=True, ready_at=now - 10)]
    return book, slots


def test_a_log_line_with_rates_eta_and_running_shards_when_not_a_terminal(caplog, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("pipeline.driver.progress.time.monotonic", lambda: clock[0])
    book, slots = book_and_slots(clock[0])
    out = io.StringIO()
    p = Progress(total_rows=40, rows_before=10, interval_s=30, stream=out)
    p.started()
    clock[0] += 10
    p.update("sampler-0", 1, rows=5, samples=4)  # shard 1 half written, not committed
    slots[1].samples = 10
    p.add(ShardStats(2, rows=10, samples=10, rejected=0, failed=0), "sampler-1")
    book.failed_attempts = 1
    with caplog.at_level(logging.INFO, logger="pipeline.driver.progress"):
        f = p.report(book, slots)
    assert f["rows_done"] == 25 and f["samples"] == 14 and f["samples_per_s"] == 1.4
    assert f["eta_s"] == 10.0  # 15 rows left at 1.5 rows/s
    assert f["per_worker"] == {"sampler-0": 0.2, "sampler-1": 0.5}
    line = caplog.records[-1].getMessage()
    assert "rows 25/40 (62.5%)" in line and "1.400 samples/s" in line and "ETA 0:00:10" in line
    assert "sampler-0 0.20/s" in line and "failed attempts 1" in line
    assert out.getvalue() == ""  # nothing drawn: no carriage returns or escape codes in a log
    assert not p.due() and p.next_at == clock[0] + 30
    p.stopped("sampler-0", 1)  # the attempt failed: what it wrote no longer counts
    assert p.figures(book, slots)["rows_done"] == 20


def test_a_live_bar_on_a_terminal(monkeypatch):
    book, slots = book_and_slots(0.0)
    term = Terminal()
    monkeypatch.setattr("sys.stdout", term)
    console = logging.StreamHandler(term)  # as setup_logging's, on the terminal
    monkeypatch.setattr(logging.getLogger(), "handlers", [console])
    p = Progress(total_rows=40, rows_before=0, interval_s=30, stream=term)
    assert p.interval_s == 1.0  # redrawn every second, whatever the log interval
    with p.showing():
        p.started()
        p.add(ShardStats(0, rows=10, samples=9, rejected=1, failed=0), "sampler-0")
        p.report(book, slots)
        logging.getLogger("pipeline.test").warning("a log line above the bar")
    shown = term.getvalue()
    assert "\r" in shown and "10/40 rows" in shown and "9 samples" in shown and "ETA" in shown
    assert "starting the sampler actors" in shown
    # the log line went through the bar's writer: the bar is cleared, the line printed, the bar redrawn
    before, after = shown.split("a log line above the bar\n")
    assert before.endswith("\r") and "10/40 rows" in after


def test_a_stall_is_reported_once_per_period_and_movement_resets_it(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("pipeline.driver.progress.time.monotonic", lambda: clock[0])
    book, slots = book_and_slots(0.0)
    p = Progress(total_rows=40, rows_before=0, interval_s=10, stream=io.StringIO(), stall_s=60)
    p.started()
    clock[0] = 59
    assert p.report(book, slots)["stalled_s"] is None
    clock[0] = 60
    assert p.report(book, slots)["stalled_s"] == 60  # nothing moved for a whole period
    clock[0] = 100
    assert p.report(book, slots)["stalled_s"] is None  # said already; again one period later
    clock[0] = 120
    assert p.report(book, slots)["stalled_s"] == 120
    p.update("sampler-0", 0, rows=2, samples=2)  # a row was written: not stalled
    clock[0] = 179
    assert p.report(book, slots)["stalled_s"] is None
    p.update("sampler-0", 0, rows=2, samples=2)  # the same answer again is no movement
    clock[0] = 181
    assert p.report(book, slots)["stalled_s"] == 61
    off = Progress(total_rows=40, rows_before=0, interval_s=10, stream=io.StringIO(), stall_s=0)
    clock[0] = 10_000
    assert off.report(book, slots)["stalled_s"] is None


def test_a_shard_queued_behind_a_running_one_counts_as_queued_not_running():
    """Two shards sent to one actor: one runs, one waits there (ray.max_in_flight_per_worker=2)."""
    from pipeline.driver.policy import Task, submitted

    book, slots = book_and_slots(0.0)
    for _ in range(2):
        st = book.take()
        submitted(slots[0], Task(st.spec, slots[0], st.attempts, ref=object(), epoch=0), 0.0)
    f = Progress(total_rows=40, rows_before=0, interval_s=10, stream=io.StringIO()).figures(book, slots)
    assert (f["shards_running"], f["shards_queued"]) == (1, 3)  # 1 waiting on sampler-0, 2 in the driver

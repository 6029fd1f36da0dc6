"""Shared by the benchmarks: the machine a report was measured on, peak memory, prompt files, tables."""

from __future__ import annotations

import datetime
import os
import resource


def _peak_mb() -> float:
    """Peak RSS of this process image. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec,
    so a child would report its parent's peak (here: writing the test file)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak() -> float | None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); returns it, None if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _peak_mb()
    except OSError:
        return None



WORDS = ("red blue small large ancient glowing quiet cat dog castle river forest robot city garden "
         "portrait watercolor photo render sketch at dawn in fog under neon light").split()


def write_prompts(path: str, rows: int, row_group_size: int, first: int = 0) -> None:
    """`rows` prompts of 8-16 words, unique ids except every 1000th row (repeats the previous row's id);
    `first`: the number of the first row (ids and seeds go on across files).
    Built with Arrow compute (no Python per row): 100 M rows take minutes, not an hour."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(first)
    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("seed", pa.int64())])
    vocab = pa.array(WORDS)
    with pq.ParquetWriter(path, schema) as w:
        for start in range(first, first + rows, row_group_size):
            n = min(row_group_size, first + rows - start)
            idx = np.arange(start, start + n)
            ids = pc.binary_join_element_wise("id-", pc.cast(pa.array(np.where(idx % 1000 == 999, idx - 1, idx)),
                                                             pa.string()), "")
            words = rng.integers(0, len(WORDS), size=(n, 16))
            lengths = rng.integers(8, 17, size=n)
            cols = [vocab.take(pa.array(words[:, j], mask=j >= lengths)) for j in range(16)]
            prompts = pc.binary_join_element_wise(*cols, " ", null_handling="skip")
            w.write_table(pa.table({"id": ids, "prompt": prompts, "seed": idx}, schema=schema),
                          row_group_size=row_group_size)


def print_rows(title: str, rows: list[dict], cols: list[str]) -> None:
    """A compact fixed-width table, columns as wide as their widest cell."""
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print(f"== {title}")
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)), flush=True)


def _cell(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    """What the figures were measured on; the load average shows how shared the machine was."""
    import platform

    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "loadavg_start": _loadavg(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "cuda": torch.version.cuda if cuda else None}


def tiny_model():
    from pipeline.config import ModelConfig
    from pipeline.models import diffusion as S

    return S.load_model(ModelConfig(id="tiny", device="cpu"))


def prompt(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(10))



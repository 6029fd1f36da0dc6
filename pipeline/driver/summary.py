"""The run summary: `run/summary.json` and the lines printed at the end of a run.

Exit codes: 0 every planned shard is committed; 1 a shard was quarantined or the run failed;
2 the config, the input or the output location cannot be used (nothing was started); 130 interrupted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.data.layout import CONTACT_SHEET, QUARANTINE_FILE, SHARDS, tar_path
from pipeline.driver.policy import DoneShards

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_summary(p: Any, ex: Any, rc: Any, index: dict[str, Any], wall_s: float, error: str | None,
                  committed_ids: Any) -> dict[str, Any]:
    """p: plan.Prepared; ex: executor.Executor or None (nothing to run); rc: localray.RayContext or None;
    index: index.json's content (its totals); committed_ids: every committed shard id."""
    planned = p.specs.shard_ids()
    is_committed = np.isin(planned, np.asarray(committed_ids, np.int64))
    committed = int(is_committed.sum())
    quarantined = sorted(ex.book.quarantined) if ex else []
    missing = sorted(set(planned[~is_committed].tolist()) - set(quarantined))
    if error or missing:
        status, code = "failed", EXIT_FAILED
    elif quarantined:
        status, code = "quarantined", EXIT_FAILED
    else:
        status, code = "succeeded", EXIT_OK
    new = ex.book.done if ex else DoneShards()
    run_samples = new.samples
    sampling_s = ex.progress.sampling_s if ex else 0.0
    workers = {}
    for s in ex.slots if ex else []:
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
        "planned_shards": len(planned), "committed_shards": committed,
        "skipped_shards": len(p.committed_before), "new_shards": len(new),
        "quarantined_shards": quarantined, "missing_shards": missing,
        "rows": totals["rows"], "samples": totals["samples"], "rejected": totals["rejected"],
        "failed": totals["failed"], "bytes": totals["bytes"],
        "this_run": {"shards": len(new), "rows": new.rows, "samples": run_samples,
                     "sampling_s": round(sampling_s, 3),
                     "samples_per_s": round(run_samples / sampling_s, 4) if sampling_s else 0.0,
                     "failed_attempts": ex.book.failed_attempts if ex else 0,
                     "actor_deaths": ex.book.actor_deaths if ex else 0, "requeues": ex.book.requeues if ex else 0},
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
    return "\n".join(lines + look_at_it(s))


def look_at_it(s: dict[str, Any]) -> list[str]:
    """Where to look after a run: the card, the contact sheet, the first shard, and (for a local
    output) one line that opens the data in Python."""
    bad = set(s["quarantined_shards"]) | set(s["missing_shards"])
    committed = [i for i in range(s["planned_shards"]) if i not in bad]
    if not s["samples"] or not committed:
        return []
    root = s["output"].rstrip("/")
    lines = ["look at it:"]
    if s.get("card"):
        lines += [f"  card           {s['card']}", f"  contact sheet  {root}/{CONTACT_SHEET}"]
    lines.append(f"  first shard    {root}/{tar_path(committed[0])}")
    if "://" not in root:
        last = committed[-1]
        if committed == list(range(committed[0], last + 1)):
            shards = f'"{root}/{SHARDS}/{{{committed[0]:06d}..{last:06d}}}.tar"'
            if committed[0] < 10**6 <= last:  # a brace range pads both ends to one width: split at 7 digits
                shards = (f'"{root}/{SHARDS}/{{{committed[0]:06d}..999999}}.tar::'
                          f'{root}/{SHARDS}/{{1000000..{last}}}.tar"')
        else:  # quarantined shards leave gaps: the committed tars, listed
            shards = "[" + ", ".join(f'"{root}/{tar_path(i)}"' for i in committed) + "]"
        # a preference group stores its images as 0.png, 1.png, ...: the first one that exists
        lines.append(f"  in Python      import webdataset as wds; ds = wds.WebDataset({shards}, shardshuffle=False)"
                     f".decode(\"pil\").to_tuple(\"png;jpg;webp;0.png;0.jpg;0.webp\", \"json\"); "
                     f"image, meta = next(iter(ds))")
    return lines

"""A rehearsal of the production config on CPU: `jobs/generate.py --config configs/sdxl.yaml` with
only the ids swapped for the full-size stand-ins (`synthgen standins DIR`), in bfloat16 at a small
size with a few steps, one sampler actor on a private local Ray.

Per run: the sampler actor's load time (Ray up to the actor ready) and peak host RSS (its process,
polled every 0.2 s), seconds per UNet eval (the shards' sampling time over their UNet evals), the
exit code and that every row is a sample, and `--dry-run`'s memory estimate for the same command.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.config import REPO_ROOT

PROMPTS = ["a red fox sitting in fresh snow", "a lighthouse on a rocky coast", "two apples on a wooden table",
           "an astronaut riding a bicycle"]
CPU = ["ray.gpus_per_worker=0", "ray.num_workers=1", "ray.cpus_per_worker=2", "ray.address=local",
       "model.dtype=bfloat16", "captioner.dtype=bfloat16", "sampler.height=128", "sampler.width=128",
       "sampler.batch_size=2", "output.shard_size=4", "scoring.scorers=[]", "model.channels_last=false"]
RUNS = {"cfg": ["sampler.method=cfg", "sampler.steps=2"],
        "answer_k3": ["sampler.method=answer", "sampler.answer.k=3", "sampler.steps=4"],
        # BLIP-2 in its own actor (one 24 GiB host cannot hold both in one float32 actor), short captions
        "dnp": ["sampler.method=dnp", "sampler.steps=2", "captioner.workers=1", "captioner.gpus_per_worker=0",
                "captioner.max_new_tokens=8", "captioner.batch_size=2"],
        # two methods x two candidates per prompt, scored by all three scorers (float32 on CPU)
        "preference": ["preference.methods=[cfg,answer]", "preference.candidates=2", "sampler.steps=2",
                       "scoring.scorers=[clip,pickscore,aesthetic]", "preference.scorer=pickscore"],
        # GenEval's judge at full size (Mask2Former Swin-S at 800x800 in float32, CLIP-L for colours) on
        # GenEval-style rows, one of each kind of clause
        "geneval": ["sampler.method=cfg", "sampler.steps=2", "scoring.scorers=[geneval]",
                    "input.extra_columns=[tag,include,exclude]"]}
GENEVAL_ROWS = [  # (prompt, tag, include, exclude), as in GenEval's evaluation_metadata.jsonl
    ("a photo of a bench", "single_object", [{"class": "bench", "count": 1}], None),
    ("a photo of two clocks", "counting", [{"class": "clock", "count": 2}], [{"class": "clock", "count": 3}]),
    ("a photo of a red cake", "colors", [{"class": "cake", "count": 1, "color": "red"}], None),
    ("a photo of a dog right of a teddy bear", "position",
     [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}], None)]


class ActorRSS:
    """Peak resident memory of each Ray actor process (named `ray::<Class>` by Ray), polled in a
    thread: total RSS, and its anonymous part (the process's own tensors) apart from the file-backed
    part (the memory-mapped weight files: clean page cache the kernel can drop under pressure)."""

    def __init__(self, period_s: float = 0.2):
        self.period_s, self._stop = period_s, threading.Event()
        self.peak: dict[str, dict[str, int]] = {}  # "Class pid N" -> {"rss", "anon", "file"} bytes
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ActorRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        import psutil

        while not self._stop.is_set():
            for p in psutil.process_iter(["cmdline"]):
                m = re.match(r"ray::(SamplerActor|CaptionerActor)", " ".join(p.info["cmdline"] or []))
                if not m:
                    continue
                try:
                    status = Path(f"/proc/{p.pid}/status").read_text()
                except OSError:  # gone meanwhile
                    continue
                now = {key: int(re.search(rf"{field}:\s+(\d+)", status).group(1)) * 1024
                       for key, field in (("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"))}
                peak = self.peak.setdefault(f"{m.group(1)} pid {p.pid}", dict.fromkeys(now, 0))
                for k, v in now.items():
                    peak[k] = max(peak[k], v)
            self._stop.wait(self.period_s)


def run(standins: Path, out: Path, only: list[str] | None = None) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.parquet"
    pq.write_table(pa.table({"prompt": PROMPTS}), prompts)
    geneval_prompts = out / "geneval.parquet"  # nested values as JSON text, as a Parquet user stores them
    pq.write_table(pa.table({"prompt": [r[0] for r in GENEVAL_ROWS], "tag": [r[1] for r in GENEVAL_ROWS],
                             "include": [json.dumps(r[2]) for r in GENEVAL_ROWS],
                             "exclude": [json.dumps(r[3]) if r[3] else None for r in GENEVAL_ROWS]}), geneval_prompts)
    from pipeline.models.standins import AESTHETIC_REPO, OVERRIDE, directory

    ids = [f"{key}={directory(standins, model_id)}" for model_id, keys in OVERRIDE.items() for key in keys
           if model_id != AESTHETIC_REPO]
    ids.append(f"scoring.aesthetic_head={directory(standins, AESTHETIC_REPO) / 'model.safetensors'}")
    rows = []
    for name, extra in RUNS.items():
        if only and name not in only:
            continue
        shutil.rmtree(out / name, ignore_errors=True)  # a finished output would not be sampled again
        inp = geneval_prompts if name == "geneval" else prompts
        args = ["--config", str(REPO_ROOT / "configs" / "sdxl.yaml"), f"input.path={inp}",
                f"output.path={out / name}", *ids, *CPU, *extra]
        plan = _dry_run(args, out / f"{name}.plan.json")
        t0 = time.time()
        with ActorRSS() as rss:
            p = subprocess.run([sys.executable, str(REPO_ROOT / "jobs" / "generate.py"), *args], capture_output=True,
                               text=True, cwd=REPO_ROOT)
        wall = time.time() - t0
        log = p.stdout + p.stderr
        rows.append(_row(name, out / name, p.returncode, wall, log, rss.peak, plan))
    return rows


def _dry_run(args: list[str], path: Path) -> dict[str, Any]:
    p = subprocess.run([sys.executable, str(REPO_ROOT / "jobs" / "generate.py"), *args, "--dry-run",
                        "--plan-json", str(path)], capture_output=True, text=True, cwd=REPO_ROOT)
    return json.loads(path.read_text()) if p.returncode == 0 else {"error": (p.stderr or p.stdout)[-500:]}


def check_output(out: Path) -> str:
    """The checks a tiny run's output passes in the tests: every planned shard committed; each tar holds
    exactly its sidecar's ok rows, each key once; index.json lists the committed shards. "ok" or why not."""
    import tarfile

    import pyarrow.parquet as pq

    from pipeline.data.layout import committed_shards, sidecar_path, tar_path
    from pipeline.data.storage import open_location

    loc = open_location(str(out))
    committed = committed_shards(loc)
    planned = json.loads((out / "run" / "fingerprint.json").read_text())["planned_shards"]
    if committed != set(range(planned)):
        return f"committed {sorted(committed)} of {planned} planned shards"
    for i in sorted(committed):
        rows = pq.read_table(out / sidecar_path(i)).to_pylist()
        with tarfile.open(out / tar_path(i)) as tf:
            names = [m.name for m in tf.getmembers()]
        keys = {n.split(".", 1)[0] for n in names}
        if len(names) != len(set(names)) or keys != {r["key"] for r in rows if r["status"] == "ok"}:
            return f"shard {i}: the tar's keys differ from the sidecar's ok rows"
        if not all(f"{k}.json" in names for k in keys):
            return f"shard {i}: a sample without its json"
    listed = {s["shard"] for s in json.loads((out / "index.json").read_text())["shards"]}
    return "ok" if listed == committed else f"index.json lists {sorted(listed)}"


def _stamp(line: str) -> float:
    return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000


def _row(name: str, out: Path, code: int, wall: float, log: str, peak: dict[str, dict[str, int]],
         plan: dict) -> dict:
    stats = [json.loads(f.read_text()) for f in sorted((out / "shards").glob("*.stats.json"))]
    summary = json.loads((out / "run" / "summary.json").read_text()) if (out / "run" / "summary.json").exists() else {}
    up = [ln for ln in log.splitlines() if "pipeline.driver.localray: ray:" in ln]
    ready = [ln for ln in log.splitlines() if " ready: node " in ln]
    captioner = [v for k, v in peak.items() if k.startswith("CaptionerActor")]
    sampler = [v for k, v in peak.items() if k.startswith("SamplerActor")]
    sampler_rss = max((v["rss"] for v in sampler), default=0)
    sampler_anon = max((v["anon"] for v in sampler), default=0)
    memory = plan.get("memory_gb", {})
    weights = sum(memory.get("sampler_weights", {}).values())
    return {
        "run": name, "exit_code": code, "wall_s": round(wall, 1),
        "rows": summary.get("rows"), "samples": summary.get("samples"),
        "output_checks": check_output(out) if code == 0 else None,
        "load_s": round(_stamp(ready[0]) - _stamp(up[0]), 1) if up and ready else None,
        "sampler_peak_rss_gb": round(sampler_rss / 1e9, 2), "sampler_peak_anon_gb": round(sampler_anon / 1e9, 2),
        "weights_gb": round(weights, 2), "rss_over_weights": round(sampler_rss / 1e9 / weights, 2) if weights else None,
        "anon_over_weights": round(sampler_anon / 1e9 / weights, 2) if weights else None,
        "planned_sampler_gb": memory.get("sampler_actor"),
        "captioner_peak_rss_gb": round(max((v["rss"] for v in captioner), default=0) / 1e9, 2) or None,
        "captioner_peak_anon_gb": round(max((v["anon"] for v in captioner), default=0) / 1e9, 2) or None,
        "planned_captioner_gb": memory.get("captioner_actor"),
        "unet_evals": sum(s["unet_evals"] for s in stats),
        "s_per_unet_eval": round(sum(s["sample_s"] for s in stats) / max(sum(s["unet_evals"] for s in stats), 1), 3),
        "error": summary.get("error") or (log[-800:] if code else None),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| run | exit | checks | rows → samples | sampler load (s) | peak RSS (GB) | of it anonymous (GB) | "
            "weights (GB) | RSS / weights | anonymous / weights | planned (GB) | s / UNet eval |")
    lines = [head, "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['exit_code']} | {r['output_checks']} | {r['rows']} → {r['samples']} | "
                     f"{r['load_s']} | "
                     f"{r['sampler_peak_rss_gb']} | {r['sampler_peak_anon_gb']} | {r['weights_gb']} | "
                     f"{r['rss_over_weights']} | {r['anon_over_weights']} | {r['planned_sampler_gb']} | "
                     f"{r['s_per_unet_eval']} |")
    return "\n".join(lines)

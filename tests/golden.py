#!/usr/bin/env python
"""Golden check: the same configs must give byte-identical datasets across a refactoring.

    python tests/golden.py record tests/golden.json     # before the change
    python tests/golden.py check tests/golden.json      # after it: exit 1 and the differing files if any

Runs `jobs/generate.py` (a private local Ray each time, tiny models) for four configs: cfg, answer,
dnp through a captioner actor, and a preference run (two methods x two candidates, every scorer).
Records the sha256 of every shard tar and sidecar and of index.json. Wall-clock figures live in the
stats files, which are therefore not compared. The checksums are only comparable on one machine
kind with the same library versions (float results may differ across CPUs), so the recorded file
carries the machine and versions, and `check` says when they differ. tests/golden.json is the
record of the current code on the project's CPU machine (2 vCPUs, torch 2.13.0+cpu).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMON = ["input.id_column=id", "sampler.steps=6", "sampler.height=32", "sampler.width=32", "output.shard_size=8",
          "ray.num_workers=2", "ray.address=local", "logging.level=WARNING"]
RUNS = {
    "cfg": [],
    "answer": ["--config", "configs/methods/answer.yaml"],
    "dnp_captioner_actor": ["--config", "configs/methods/dnp.yaml", "captioner.workers=1",
                            "sampler.dnp.keep_negative_image=true"],
    "preference_all_scorers": ["preference.candidates=2", "preference.methods=[cfg,answer]",
                               "scoring.scorers=[clip,pickscore,aesthetic]", "preference.scorer=pickscore"],
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "machine": platform.machine()}
    for pkg in ("torch", "diffusers", "transformers", "pyarrow", "webdataset", "pillow"):
        out[pkg] = md.version(pkg)
    try:
        with open("/proc/cpuinfo") as f:
            out["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return out


def run_all(work: Path) -> dict[str, dict[str, str]]:
    result = {}
    for name, args in RUNS.items():
        out = work / name
        cmd = [sys.executable, "jobs/generate.py", *args, *COMMON, f"output.path={out}"]
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"{name}: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        files = sorted((out / "shards").glob("*.tar")) + sorted((out / "shards").glob("*.parquet"))
        result[name] = {str(f.relative_to(out)): sha256(f) for f in files + [out / "index.json"]}
        print(f"{name}: {len(files)} files", flush=True)
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("record", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, path = argv[0], Path(argv[1])
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        os.environ.setdefault("SYNTHGEN_CACHE", str(Path(tmp) / "cache"))
        got = {"versions": versions(), "runs": run_all(Path(tmp))}
    if mode == "record":
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print(f"recorded {sum(len(v) for v in got['runs'].values())} checksums to {path}")
        return 0
    want = json.loads(path.read_text())
    if want["versions"] != got["versions"]:
        print(f"note: recorded on {want['versions']}, checked on {got['versions']}")
    bad = [f"{run}/{f}" for run in sorted(set(want["runs"]) | set(got["runs"]))
           for f in sorted(set(want["runs"].get(run, {})) | set(got["runs"].get(run, {})))
           if want["runs"].get(run, {}).get(f) != got["runs"].get(run, {}).get(f)]
    for b in bad:
        print(f"differs: {b}")
    print("identical" if not bad else f"{len(bad)} file(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

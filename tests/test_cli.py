"""The entry points: jobs/*.py only hand over to pipeline/cli/, and the commands run as users type them."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
JOBS = sorted((REPO / "jobs").glob("*.py"))


@pytest.mark.parametrize("job", JOBS, ids=[j.name for j in JOBS])
def test_job_scripts_only_call_their_cli_module(job):
    tree = ast.parse(job.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    modules = {n.module for n in imports if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in imports if isinstance(n, ast.Import) for a in n.names}
    assert modules == {"sys", f"pipeline.cli.{job.stem}"}, modules
    assert "sys.path" not in job.read_text()


@pytest.mark.parametrize("job", JOBS, ids=[j.name for j in JOBS])
def test_job_scripts_answer_help_from_any_directory(job, tmp_path):
    p = subprocess.run([sys.executable, str(job), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "usage:" in p.stdout, p.stderr[-2000:]


def test_render_takes_the_prompt_options_and_overrides_in_any_order(tmp_path, tiny_cache):
    from pipeline.cli.render import main

    out = tmp_path / "render"
    assert main(["a red fox", "--out", str(out), "--methods", "cfg,dns", "sampler.steps=1", "sampler.height=32",
                 "sampler.width=32"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["all.png", "cfg.png", "dns.png"]


def synthgen() -> str:
    """The installed console script of this Python (`pip install -e .` puts it beside the interpreter)."""
    script = Path(sys.executable).with_name("synthgen")
    found = str(script) if script.exists() else shutil.which("synthgen")
    assert found, "no `synthgen` command: install the project (pip install -e .)"
    return found


def test_synthgen_lists_its_commands_and_each_answers_help():
    p = subprocess.run([synthgen(), "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    listed = [line.split()[0] for line in p.stdout.split("commands:\n")[1].split("\n\n")[0].splitlines()]
    assert listed == ["generate", "export-pairs", "evaluate", "render", "card", "benchmark", "standins", "toy"]
    # `synthgen NAME --help` for every command, through the console script's main() in one fresh interpreter
    # (an interpreter start per command cost about 0.5 CPU-s each): exit status and output of each
    code = ("import contextlib, io, json, sys; from pipeline.cli.main import main\n"
            "def run(name):\n"
            "    out, err = io.StringIO(), io.StringIO()\n"
            "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
            "        try:\n"
            "            rc = main([name, '--help'])\n"
            "        except SystemExit as e:\n"
            "            rc = e.code\n"
            "    return [rc, out.getvalue(), err.getvalue()]\n"
            "print(json.dumps({name: run(name) for name in sys.argv[1:]}))")
    h = subprocess.run([sys.executable, "-c", code, *listed], capture_output=True, text=True, timeout=120)
    assert h.returncode == 0, h.stderr[-2000:]
    helps = json.loads(h.stdout.splitlines()[-1])
    for name in listed:
        rc, out, err = helps[name]
        assert rc == 0 and out.startswith(f"usage: synthgen {name}"), err[-2000:]
    bad = subprocess.run([synthgen(), "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr


NOISE = ("torchvision", "accelerate", "torch_dtype", "Loading pipeline components", "Loading weights")


@pytest.mark.slow
def test_synthgen_generate_with_no_arguments_runs_the_demo_quietly_and_says_where_to_look(tmp_path, ray_head):
    """From any directory, no arguments: the demo (tiny model, demo prompts). It runs on the Ray it is
    given (RAY_ADDRESS, as under `ray job submit`: here the suite's shared head; that a machine with no
    Ray starts a private one is the next test). The captured output (not a terminal) has progress lines
    with rate and ETA, none of the third-party noise at INFO, and ends with where the card, contact sheet
    and first shard are and a line of Python that opens the data, which works."""
    env = {**os.environ, "RAY_ADDRESS": ray_head.address}
    p = subprocess.run([synthgen(), "generate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    progress = [line for line in out.splitlines() if "progress: rows" in line]
    assert progress and "rows 24/24 (100.0%)" in progress[-1], out[-3000:]
    assert re.search(r"\d+\.\d{3} samples/s", progress[-1]) and "ETA 0:00:00" in progress[-1]
    assert not [n for n in NOISE if n in out], out
    assert "\r" not in out and "\x1b" not in out.replace("\x1b[36m", "").replace("\x1b[0m", "")
    root = tmp_path / "outputs" / "default"
    tail = out.split("look at it:\n")[1].splitlines()
    where = {line[:15].strip(): line[15:].strip() for line in tail}
    assert where["card"] == str(root / "README.md") and Path(where["card"]).is_file()
    assert where["contact sheet"] == str(root / "card" / "contact_sheet.png") and Path(where["contact sheet"]).is_file()
    assert where["first shard"] == str(root / "shards" / "000000.tar")
    code = where["in Python"] + "; print(image.size, meta['prompt_id'], sum(1 for _ in ds), sep='|')"
    py = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert py.returncode == 0, py.stderr[-2000:]
    assert py.stdout.split("|") == ["(64, 64)", "demo.parquet:0", "24\n"]
    assert json.loads((root / "run" / "summary.json").read_text())["ray"]["mode"] == "cluster"


@pytest.mark.ray_private
def test_with_no_cluster_the_job_starts_a_private_local_ray(tmp_path):
    """`ray.address=local` (and no argument on a machine where no Ray runs): a private single-node Ray on
    127.0.0.1 with all CPUs, started by the driver; the `pipeline` package reaches its workers."""
    code = ("import ray; from pipeline.config import load_config; from pipeline.driver.localray import connect_ray; "
            "rc = connect_ray(load_config(overrides=['ray.address=local'])); "
            "f = ray.remote(lambda: __import__('pipeline.records').records.sample_key(1, 2)); "
            "print(rc.mode, rc.started_here, rc.address.split(':')[0], ray.get(f.remote()), "
            "int(ray.cluster_resources()['CPU']), sep='|')")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1].split("|") == ["local", "True", "127.0.0.1", "000001000002",
                                                            str(os.cpu_count())]

"""The entry points: jobs/*.py only hand over to pipeline/cli/, and the commands run as users type them."""

from __future__ import annotations

import ast
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

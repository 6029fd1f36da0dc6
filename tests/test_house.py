"""Rules the source tree keeps: dependencies between the library's modules point one way.

An import inside a function counts as much as one at the top: a deferred import that closes a
circle only hides it (pipeline/config.py and config_checks.py did this until #22).
"""

from __future__ import annotations

import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"


def import_graph() -> dict[str, set[str]]:
    """module -> the pipeline modules it imports anywhere in its file."""
    files = {".".join(p.relative_to(PIPELINE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PIPELINE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("pipeline"):
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                         for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("pipeline")}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_deferred_import_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_two_pipeline_modules_import_each_other_even_inside_a_function():
    graph = import_graph()
    assert "pipeline.config_checks" in graph["pipeline.config"]  # the graph sees imports at all
    assert cycles(graph) == []


def test_the_job_driver_never_imports_torch():
    """The driver plans, dispatches and writes the card; torch and the model libraries load in the
    actors only (pipeline/driver/actors.py `shard_worker`): ~1.5 s and ~180 MB less on the driver,
    whose memory must stay flat at a billion prompts. A fresh process imports everything the job's
    driver imports at the top of its modules; no driver module imports the sampler worker at all."""
    import subprocess
    import sys

    driver = ["pipeline.cli.generate", "pipeline.driver.job", "pipeline.driver.executor", "pipeline.driver.actors",
              "pipeline.driver.localray", "pipeline.driver.summary", "pipeline.report.card"]
    heavy = "{'torch', 'diffusers', 'transformers'}"
    code = f"import sys; import {', '.join(driver)}; print(sorted({heavy} & set(sys.modules)))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr[-2000:]
    graph = import_graph()
    assert not [m for m in driver if m != "pipeline.driver.actors" and "pipeline.worker" in graph[m]]
    assert "pipeline.worker" in graph["pipeline.driver.actors"]  # only inside shard_worker, in the actor

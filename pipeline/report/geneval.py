"""GenEval's table from per-image verdicts: the six task scores and their mean, per method, with 95 %
intervals (`synthgen evaluate --benchmark geneval`, pipeline/report/evaluation.py).

As GenEval's `evaluation/summary_scores.py` computes them: a task's score is the fraction of its
images judged correct; the overall score is the plain mean of the task scores (each task weighs
the same, whatever its number of prompts). Also GenEval's "% correct images" and "% correct prompts"
(a prompt counts when any of its images is correct).

Intervals: the images of one prompt share the prompt, so they are not independent draws; a task's
interval is the Student t interval of the mean over its prompts of each prompt's fraction of correct
images (with equally many images per prompt that mean is the task score itself). The overall
interval is a normal one: its standard error is sqrt(sum of the tasks' squared standard errors) / 6
(the tasks are disjoint prompt sets, so independent). Images without a verdict (a scorer error) are
left out and counted.

Also written: per method, the verdicts in GenEval's own results format (`geneval/<method>.jsonl`: one
line per image with filename, tag, prompt, correct, reason, metadata, details), which GenEval's
`summary_scores.py` reads as it is.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from pipeline.report.stats import mean_ci
from pipeline.scoring.geneval_rules import TASKS

TASK_TITLES = {"single_object": "Single object", "two_object": "Two object", "counting": "Counting",
               "colors": "Colors", "position": "Position", "color_attr": "Color attribution"}
# GenEval's published scores (its README's "Main results"; GenEval's own judge: mmdetection's Mask2Former,
# open_clip's ViT-L/14), 4 images per prompt: overall, then the six tasks in TASKS order (None: not given).
REFERENCE = {
    "Stable Diffusion v1.5": (0.43, 0.97, 0.38, 0.35, 0.76, 0.04, 0.06),
    "Stable Diffusion v2.1": (0.50, 0.98, 0.51, 0.44, 0.85, 0.07, 0.17),
    "Stable Diffusion XL": (0.55, 0.98, 0.74, 0.39, 0.85, 0.15, 0.23),
}
Z95 = 1.959963984540054


def _extra(row: dict[str, Any]) -> dict[str, Any]:
    """The row's input.extra_columns (JSON text in results.parquet), nested values decoded."""
    extra = json.loads(row.get("extra") or "{}")
    return {k: json.loads(v) if k in ("include", "exclude") and isinstance(v, str) else v for k, v in extra.items()}


def task_table(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per method: each task's score with its interval, the overall score with its interval, and the
    image/prompt counts. `rows`: one per image with method, prompt_id, extra (its tag), score_geneval (1, 0, None)."""
    out: dict[str, Any] = {}
    for m in methods:
        per_prompt: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        missing = 0
        for r in rows:
            if r["method"] != m:
                continue
            if r.get("score_geneval") is None:
                missing += 1
                continue
            per_prompt[_extra(r)["tag"]][r["prompt_id"]].append(float(r["score_geneval"]))
        tasks = {}
        for tag in [t for t in TASKS if t in per_prompt] + sorted(set(per_prompt) - set(TASKS)):
            fractions = [sum(v) / len(v) for v in per_prompt[tag].values()]
            images = [x for v in per_prompt[tag].values() for x in v]
            ci = mean_ci(fractions)
            tasks[tag] = {"score": sum(images) / len(images), "ci_low": ci["ci_low"], "ci_high": ci["ci_high"],
                          "images": len(images), "prompts": len(fractions),
                          "se": ci["std"] / math.sqrt(len(fractions)) if ci["std"] is not None else None}
        overall = sum(t["score"] for t in tasks.values()) / len(tasks) if tasks else None
        ses = [t["se"] for t in tasks.values()]
        se = math.sqrt(sum(s * s for s in ses)) / len(ses) if tasks and None not in ses else None
        prompts = [v for t in per_prompt.values() for v in t.values()]
        images = [x for v in prompts for x in v]
        out[m] = {"overall": overall,
                  "overall_ci_low": overall - Z95 * se if se is not None else None,
                  "overall_ci_high": overall + Z95 * se if se is not None else None,
                  "tasks": tasks, "images": len(images), "prompts": len(prompts), "without_verdict": missing,
                  "correct_images": sum(images) / len(images) if images else None,
                  "correct_prompts": sum(any(v) for v in prompts) / len(prompts) if prompts else None,
                  "all_six_tasks": set(TASKS) <= set(tasks)}
    return out


def _cell(v: float | None, lo: float | None = None, hi: float | None = None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.2f}" + (f" ({lo:.2f}–{hi:.2f})" if lo is not None and hi is not None else "")


def render_table(table: dict[str, Any], images_per_prompt: int) -> str:
    """GenEval's table as Markdown: one row per method, then the published reference rows."""
    head = "| method | Overall | " + " | ".join(TASK_TITLES[t] for t in TASKS) + " | images | correct prompts |"
    lines = ["## GenEval\n",
             f"GenEval's six tasks ({images_per_prompt} image(s) per prompt), judged by this project's GenEval "
             "judge (pipeline/scoring/geneval.py: transformers' Mask2Former and CLIP ViT-L/14, GenEval's rules). "
             "Task score = fraction of its images judged correct; Overall = mean of the task scores. 95 % "
             "intervals: Student t over each task's per-prompt fractions; normal for Overall.\n",
             head, "|---" * (len(TASKS) + 4) + "|"]
    for m, t in table.items():
        tasks = [_cell(*(t["tasks"][k][f] for f in ("score", "ci_low", "ci_high"))) if k in t["tasks"] else "n/a"
                 for k in TASKS]
        lines.append(f"| `{m}` | {_cell(t['overall'], t['overall_ci_low'], t['overall_ci_high'])} | "
                     + " | ".join(tasks) + f" | {t['images']} | {_cell(t['correct_prompts'])} |")
    lines += ["", "Published with GenEval's own judge (mmdetection's Mask2Former weights, open_clip), "
                  "4 images per prompt, for comparison (not measured here):\n", head, "|---" * (len(TASKS) + 4) + "|"]
    for name, (overall, *tasks) in REFERENCE.items():
        lines.append(f"| {name} | {overall:.2f} | " + " | ".join(f"{v:.2f}" for v in tasks) + " | | |")
    if any(not t["all_six_tasks"] for t in table.values()):
        lines.append("\nNot every task has prompts here (e.g. --limit): Overall is the mean of the tasks present, "
                     "not comparable with the published figures.")
    return "\n".join(lines) + "\n"


def geneval_results_lines(rows: list[dict[str, Any]], method: str) -> str:
    """The method's verdicts in GenEval's results.jsonl format (one JSON object per image)."""
    out = []
    for r in rows:
        if r["method"] != method or r.get("score_geneval") is None:
            continue
        seen = json.loads(r["score_details"])["geneval"]
        extra = _extra(r)
        metadata = {k: extra[k] for k in ("tag", "include", "exclude") if extra.get(k) is not None}
        metadata["prompt"] = r["prompt"]
        out.append(json.dumps({
            "filename": f"{r['prompt_id']}/{r['candidate']:04d}.png", "tag": extra["tag"], "prompt": r["prompt"],
            "correct": bool(r["score_geneval"]), "reason": seen["reason"], "metadata": json.dumps(metadata),
            "details": json.dumps({k: [o["box"] + [o["score"]] for o in v] for k, v in seen["objects"].items()})}))
    return "\n".join(out) + ("\n" if out else "")

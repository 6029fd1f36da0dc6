"""The gate's figures: counted per shard by the worker, stored in the shard's stats (`extra.gate`),
summed over shards by the card; plus what `--dry-run` expects a gate to cost.

    f = new_figures(["toy_judge >= 1"], tries=4, cost_unit=40)   # per shard
    count_try(f, try_, failed_rules); count_row(f, "kept"); ...
    total = merge(f_shard0, f_shard1)                           # any order: sums only
    derived(total)                                              # acceptance per try, cost per kept sample

A slot is one image the row asks for (one per candidate and method; a plain run has one per row):
`tried[t]` slots ran try t + 1, `passed[t]` passed there. Rows end `kept` (every slot passed),
`kept_best` (gate.on_fail=best, a slot never passed), `dropped` (gate.on_fail=drop) or `failed`
(an error, as without a gate). Cost is every UNet eval spent, failed tries included, plus
Attend-and-Excite's gradient passes at AE_PASS_EVALS evals each, per kept sample; `cost_unit` is
cfg's evals per image at the run's steps (2N), the unit the card and the benchmark report it in.
"""

from __future__ import annotations

from typing import Any

from pipeline.sampling.methods import AE_PASS_EVALS

ROW_ENDS = ("kept", "kept_best", "dropped", "failed")


def new_figures(rules: list[str], tries: int, cost_unit: int) -> dict[str, Any]:
    return {"rules": list(rules), "tries": tries, "cost_unit_evals": cost_unit, "slots": 0,
            "tried": [0] * tries, "passed": [0] * tries, "rule_failures": dict.fromkeys(rules, 0),
            "rows": 0, **dict.fromkeys(ROW_ENDS, 0), "unet_evals": 0, "ae_evals": 0}


def count_try(f: dict[str, Any], try_: int, failed_rules: list[str] | None, unet_evals: int = 0,
              ae_evals: int = 0) -> None:
    """One try of one slot: `failed_rules` [] passed, None when the try produced no image (an error)."""
    if try_ == 1:
        f["slots"] += 1
    f["tried"][try_ - 1] += 1
    f["unet_evals"] += unet_evals
    f["ae_evals"] += ae_evals
    if failed_rules == []:
        f["passed"][try_ - 1] += 1
    for r in failed_rules or []:
        f["rule_failures"][r] = f["rule_failures"].get(r, 0) + 1


def count_row(f: dict[str, Any], end: str) -> None:
    if end not in ROW_ENDS:
        raise ValueError(f"a row ends as one of {ROW_ENDS}, not {end!r}")
    f["rows"] += 1
    f[end] += 1


def merge(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """Two shards' figures as one (sums; per-try lists padded to the longer)."""
    if not a or not b:
        return dict(b or a) if (a or b) else None
    out = dict(a)
    for k in ("slots", "rows", *ROW_ENDS, "unet_evals", "ae_evals"):
        out[k] = a.get(k, 0) + b.get(k, 0)
    for k in ("tried", "passed"):
        x, y = list(a.get(k, [])), list(b.get(k, []))
        n = max(len(x), len(y))
        out[k] = [(x[i] if i < len(x) else 0) + (y[i] if i < len(y) else 0) for i in range(n)]
    failures = dict(a.get("rule_failures", {}))
    for r, n in b.get("rule_failures", {}).items():
        failures[r] = failures.get(r, 0) + n
    out["rule_failures"] = failures
    out["rules"] = list(dict.fromkeys(list(a.get("rules", [])) + list(b.get("rules", []))))
    out["tries"] = max(a.get("tries", 0), b.get("tries", 0))
    return out


def cost_evals(unet_evals: float, ae_evals: float) -> float:
    """Evals spent, Attend-and-Excite's gradient passes counted at what a pass costs."""
    return unet_evals + AE_PASS_EVALS * ae_evals


def derived(f: dict[str, Any]) -> dict[str, Any]:
    """What the card shows: acceptance at each try (of the slots that ran it), the share of slots
    accepted by then, rows kept and dropped, the mean tries per slot and the cost per kept sample."""
    slots, kept = f["slots"], f["kept"]
    spent = cost_evals(f["unet_evals"], f["ae_evals"])
    cum, by_try = 0, []
    for t, (tried, passed) in enumerate(zip(f["tried"], f["passed"]), 1):
        cum += passed
        by_try.append({"try": t, "tried": tried, "passed": passed,
                       "acceptance": passed / tried if tried else None,
                       "accepted_by_now": cum / slots if slots else None})
    per_kept = spent / kept if kept else None
    unit = f.get("cost_unit_evals") or None
    return {"by_try": by_try, "mean_tries": sum(f["tried"]) / slots if slots else None,
            "kept_fraction": kept / f["rows"] if f["rows"] else None,
            "evals_per_kept": per_kept, "cost_per_kept": per_kept / unit if per_kept is not None and unit else None}


def expected(per_try_evals: list[float], tries: int, pass_rate: float | None, on_fail: str) -> dict[str, Any]:
    """Per slot, for --dry-run: the worst case (every try runs) and, with a pass rate p (each try
    passing independently with probability p), the expected tries, evals, kept fraction and evals per
    kept sample. `per_try_evals[t]`: evals of try t + 1 (escalations may cost more)."""
    worst = sum(per_try_evals[:tries])
    out: dict[str, Any] = {"tries": tries, "worst_evals": worst, "pass_rate": pass_rate}
    if pass_rate is None:
        return out
    q = 1.0 - pass_rate
    reach = [q ** t for t in range(tries)]  # probability that try t + 1 runs
    evals = sum(r * e for r, e in zip(reach, per_try_evals))
    kept = 1.0 if on_fail == "best" else 1.0 - q ** tries
    out.update({"expected_tries": sum(reach), "expected_evals": evals, "kept_fraction": kept,
                "evals_per_kept": evals / kept if kept else None})
    return out

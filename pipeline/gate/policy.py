"""What the gate decides, as plain functions of the tries' records (no images, no torch).

    again(try_meta, tries)          # sample this image once more?
    verdict(rules, on_fail, slots)  # a row whose images are all over: kept / kept_best / dropped / failed

A try's record is what every sample stores under `gate.attempts`: {"try", "seed", "method",
"scores", "failed" (the rules it failed; [] passed), "unet_evals", "ae_evals"}, or {"try", "seed",
"method", "error"} when no image came out (out of memory below the floor, non-finite after its
resamples). A row has one slot per image it asks for (a candidate of a method).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.gate.rules import Rule, best


def again(try_meta: dict[str, Any], tries: int) -> bool:
    """Another try of this image: it failed a rule (an error ends it) and tries are left."""
    return bool(try_meta.get("failed")) and try_meta["try"] < tries


@dataclass
class Verdict:
    end: str  # kept | kept_best | dropped | failed (pipeline/gate/figures.ROW_ENDS)
    chosen: list[int]  # per slot, the index of the try whose image is kept ([] when none is)
    records: list[dict[str, Any]]  # per slot, its `gate` metadata
    reason: str = ""  # dropped / failed: why, for the sidecar's error column


def verdict(rules: list[Rule], on_fail: str, slots: list[list[dict[str, Any]]]) -> Verdict:
    """The end of a row whose slots are all over (each slot: its tries' records, in order)."""
    texts = [r.text for r in rules]
    errors = sorted({t["error"] for tries in slots for t in tries if "error" in t})
    passed = [tries[-1].get("failed") == [] for tries in slots]
    records = [{"passed": ok, "tries": len(tries), "rules": texts, "attempts": tries}
               for ok, tries in zip(passed, slots)]
    if errors:
        return Verdict("failed", [], records, "; ".join(errors))
    if not all(passed) and on_fail == "drop":
        i = passed.index(False)
        which = f" (image {i} of the group's {len(slots)})" if len(slots) > 1 else ""
        return Verdict("dropped", [], records,
                       f"gate: none of {len(slots[i])} tries{which} passed {' and '.join(texts)}")
    chosen = [len(tries) - 1 if ok else best(rules, [t.get("scores") for t in tries])
              for ok, tries in zip(passed, slots)]
    for rec, k, tries in zip(records, chosen, slots):
        rec["chosen"] = tries[k]["try"]
    return Verdict("kept" if all(passed) else "kept_best", chosen, records)

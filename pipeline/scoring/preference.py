"""Candidate groups -> chosen/rejected pairs (Pick-a-Pic / Diffusion-DPO style)."""

from __future__ import annotations


def pick_pair(scores: list[float | None], margin: float = 0.0, ties: str = "skip") -> tuple[int, int] | None:
    """(chosen, rejected) candidate indices: the best and worst scored candidates.

    None when fewer than two candidates have a score, or when best − worst < margin. An exact tie
    (best == worst) is skipped with ties="skip"; with ties="first" the lower index is chosen.
    """
    scored = [(s, i) for i, s in enumerate(scores) if s is not None]
    if len(scored) < 2:
        return None
    best = max(scored, key=lambda p: (p[0], -p[1]))
    worst = min(scored, key=lambda p: (p[0], -p[1]))
    if best[1] == worst[1]:  # all equal: max and min picked the same (first) index
        worst = max((p for p in scored if p[1] != best[1]), key=lambda p: -p[1])
    gap = best[0] - worst[0]
    if gap == 0 and ties == "skip":
        return None
    if gap < margin:
        return None
    return best[1], worst[1]

"""The toy world's judge and describer: classical image analysis of `pipeline.toy.world` images, numpy only.

detect: every pixel goes to the nearest of white and the palette colours, or is ignored when it lies farther than
COLOUR_TOL from all of them (blends, anti-aliasing, noise). 4-connected components of one colour with at least
MIN_AREA px (per 64² image; scaled with the image's area) are objects. Shape from two features of a component:
`drop`, how far its centroid lies below its bounding box's centre as a fraction of the box's height (an apex-up
triangle ≈ 1/6, circle and square 0), and `fill`, its area over its box's area (square 1, circle ≈ π/4).

compliance: the fraction of checks an image passes against a prompt. One check per object slot (the larger of
the number of objects asked for and seen): 1 for an object of the right colour and shape, ½ for one that has
only the colour or only the shape right, 0 for a missing or an extra object (slots are matched to maximise the
sum). Plus, for a relation prompt, one check that some pair of the named objects stands in the relation (by
`world.relation_holds`). An empty prompt on an empty image scores 1. `exact` is score == 1.

describe: a caption in the world's grammar of what `detect` sees (DNP's captioner with a perfect describer).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.toy.world import BACKGROUND, COLOURS, PALETTE, SIDE, Item, Spec, parse, relation_holds, text

COLOUR_TOL = 70  # RGB distance; palette colours are ≥ 160 apart, so a pixel can be near at most one of them
MIN_AREA = 20  # px at 64²; the smallest object (a 13 px triangle) has 85
TRIANGLE_DROP = 0.08  # halfway between 0 (circle, square) and 1/6 (triangle)
SQUARE_FILL = 0.88  # between π/4 ≈ 0.76 (rendered circle) and 1 (square)
_REFS = np.array([BACKGROUND] + [PALETTE[c] for c in COLOURS], dtype=np.float32)


@dataclass(frozen=True)
class Detected:
    """One object seen: centroid (cx, cy) in px of the image, area in px, and the shape features."""

    colour: str
    shape: str
    cx: float
    cy: float
    area: int
    fill: float
    drop: float

    @property
    def pair(self) -> tuple[str, str]:
        return (self.colour, self.shape)

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _rgb(image) -> np.ndarray:
    """An [H, W, 3] array in 0..255 from a uint8 array, a float array in [0, 1] or a PIL image."""
    if hasattr(image, "convert"):
        image = np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image of shape {a.shape}: the judge reads [H, W, 3] RGB images")
    return a.astype(np.float32) * (255.0 if a.dtype.kind == "f" else 1.0)


def segment(image) -> np.ndarray:
    """[H, W] int: index into COLOURS of each pixel's nearest palette colour; -1 for white and ignored pixels."""
    d2 = ((_rgb(image)[:, :, None, :] - _REFS) ** 2).sum(-1)
    near = d2.argmin(-1)
    keep = (near > 0) & (d2.min(-1) <= COLOUR_TOL ** 2)
    return np.where(keep, near - 1, -1)


def label(cls: np.ndarray) -> np.ndarray:
    """[H, W] component ids (a pixel index per component; -1 outside): 4-connected runs of equal cls ≥ 0.

    Min-label propagation over the edges between equal neighbours, with pointer jumping so the number of passes
    grows with the log of a component's diameter rather than the diameter itself.
    """
    h, w = cls.shape
    flat = cls.ravel()
    idx = np.arange(h * w).reshape(h, w)
    pairs = [(idx[:, :-1], idx[:, 1:]), (idx[:-1, :], idx[1:, :])]
    p = np.concatenate([a.ravel() for a, _ in pairs])
    q = np.concatenate([b.ravel() for _, b in pairs])
    same = (flat[p] >= 0) & (flat[p] == flat[q])
    p, q = p[same], q[same]
    lab = np.arange(h * w)
    while True:
        m = np.minimum(lab[p], lab[q])
        new = lab.copy()
        np.minimum.at(new, p, m)
        np.minimum.at(new, q, m)
        new = new[new]
        if np.array_equal(new, lab):
            break
        lab = new
    return np.where(flat >= 0, lab, -1).reshape(h, w)


def _shape(fill: float, drop: float) -> str:
    if drop > TRIANGLE_DROP:
        return "triangle"
    return "square" if fill > SQUARE_FILL else "circle"


def detect(image) -> list[Detected]:
    """The objects in an image, left to right (by centroid x, then y)."""
    cls = segment(image)
    lab = label(cls)
    h, w = cls.shape
    min_area = MIN_AREA * h * w / SIDE ** 2
    ids, counts = np.unique(lab[lab >= 0], return_counts=True)
    found = []
    for cid in ids[counts >= min_area]:
        ys, xs = np.nonzero(lab == cid)
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        bh, bw = y1 - y0 + 1, x1 - x0 + 1
        cy, cx = float(ys.mean()), float(xs.mean())
        fill, drop = len(ys) / (bh * bw), (cy - (y0 + y1) / 2) / bh
        found.append(Detected(COLOURS[cls[ys[0], xs[0]]], _shape(fill, drop), cx, cy, len(ys), fill, drop))
    return sorted(found, key=lambda d: (d.cx, d.cy))


def _partial_matches(want: list[tuple[str, str]], seen: list[tuple[str, str]]) -> int:
    """Maximum matching of wanted to seen objects sharing their colour or their shape (Kuhn's augmenting paths)."""
    owner: dict[int, int] = {}

    def augment(i: int, visited: set[int]) -> bool:
        for j, s in enumerate(seen):
            if j not in visited and (s[0] == want[i][0] or s[1] == want[i][1]):
                visited.add(j)
                if j not in owner or augment(owner[j], visited):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, set()) for i in range(len(want)))


def grade(spec: Spec, found: list[Detected]) -> dict:
    """Score (see the module docstring) and its parts for a spec against detected objects."""
    want, seen = spec.wants(), Counter(d.pair for d in found)
    # Matching every exact pair first is optimal: an exact match (1) is worth any two partial ones (½ each) it
    # could displace, so only the leftovers need a matching.
    exact = sum((want & seen).values())
    partial = _partial_matches(list((want - seen).elements()), list((seen - want).elements()))
    slots = max(sum(want.values()), len(found))
    relation = None
    if spec.kind == "relation":
        (a, b), rel = spec.items, spec.relation
        relation = any(x is not y and relation_holds(rel, (x.cx, x.cy), (y.cx, y.cy))
                       for x in found if x.pair == (a.colour, a.shape) for y in found if y.pair == (b.colour, b.shape))
    checks = slots + (relation is not None)
    score = 1.0 if checks == 0 else (exact + 0.5 * partial + bool(relation)) / checks
    return {"score": score, "exact": score == 1.0, "matched": exact, "partial": partial, "slots": slots,
            "relation": relation}


def compliance(prompt: str | Spec, image) -> dict:
    """How well an image does what the prompt asks: score in [0, 1], exact, the objects seen and their caption."""
    spec = parse(prompt) if isinstance(prompt, str) else prompt
    found = detect(image)
    return {**grade(spec, found), "objects": [d.to_dict() for d in found], "seen": describe_found(found)}


def describe_found(found: list[Detected]) -> str:
    """The caption of detected objects: the relation form for two different objects (the dominant axis, as
    "left of" or "above"), the count form for identical ones, a list for other mixes, "an empty image" for none."""
    seen = Counter(d.pair for d in found)
    if len(found) == 2 and len(seen) == 2:
        a, b = found
        rel = "left of" if abs(b.cx - a.cx) >= abs(b.cy - a.cy) else "above"
        if (a.cx > b.cx) if rel == "left of" else (a.cy > b.cy):
            a, b = b, a
        return text(Spec("relation", (Item(*a.pair), Item(*b.pair)), rel))
    # Left to right by each kind's leftmost object, as `found` is sorted.
    items = tuple(Item(c, s, seen[(c, s)]) for c, s in dict.fromkeys(d.pair for d in found))
    if not items:
        return text(Spec("empty", ()))
    if len(items) > 1:
        return text(Spec("list", items))
    return text(Spec("single" if items[0].count == 1 else "count", items))


def describe(image) -> str:
    """A caption in the world's grammar of what is in the image."""
    return describe_found(detect(image))

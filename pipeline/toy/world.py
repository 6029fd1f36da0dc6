"""The toy world: 64×64 images of one to three flat-coloured shapes on white, captioned from a small grammar.

Deterministic from a seed (a numpy Generator), drawn with PIL without anti-aliasing in exact palette colours, so
that `pipeline.toy.judge` can read an image back exactly. The generator makes three kinds of prompt:

    single    "a red circle"
    relation  "a red circle left of a blue square"      (left of, right of, above, below)
    count     "two green triangles"                     (one to three)

`parse` also reads the two forms only the describer writes: a list ("a red circle, two blue squares and a green
triangle") and "an empty image".

Held out: the colour–shape pairs in HELDOUT never appear in split "train"; every prompt of split "heldout" contains
at least one of them, so a model trained on "train" meets them only as new compositions of seen words.

Relations are between centroids (a triangle's lies a third of its half-height below its box centre). "A left of B"
holds when B's centroid lies to the right of A's by more than it lies above or below it: the named axis dominates
(`relation_holds`, the judge's rule). Generated scenes keep a clear margin: at least REL_MARGIN px on the named
axis and at most half that offset on the other.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIDE = 64
BACKGROUND = (255, 255, 255)
SHAPES = ("circle", "square", "triangle")
# Far apart in RGB (≥ 160 from each other and from white) so nearest-colour segmentation has a wide margin.
PALETTE = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 200, 30)}
COLOURS = tuple(PALETTE)
SIZES = (13, 17)  # extent of an object's bounding box in px; odd so the box has a centre pixel; not in captions
PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)
# One pair per shape, each with another colour: every word is still seen in training, only the pairing is new.
HELDOUT = (("red", "triangle"), ("green", "square"), ("blue", "circle"))
TRAIN_PAIRS = tuple(p for p in PAIRS if p not in HELDOUT)
SPLITS = ("train", "heldout")
KINDS = ("single", "relation", "count")
# Scenes only asked for by name: three different objects ("list", the describer's form for them) and none.
EXTRA_KINDS = ("list", "empty")
RELATIONS = ("left of", "right of", "above", "below")
MAX_COUNT = 3  # the generator's counts; `parse` reads any positive count
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
BORDER = 2  # px between an object and the image edge
GAP = 4  # px of white between the bounding boxes of two objects
REL_MARGIN = 10  # px between centroids on a generated relation's axis


@dataclass(frozen=True)
class Obj:
    """One drawn object; (cx, cy) is its bounding box's centre pixel (column, row)."""

    shape: str
    colour: str
    cx: int
    cy: int
    size: int

    @property
    def pair(self) -> tuple[str, str]:
        return (self.colour, self.shape)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Inclusive pixel box (x0, y0, x1, y1)."""
        return _box(self.cx, self.cy, self.size)

    @property
    def centroid(self) -> tuple[float, float]:
        """Centre of mass (x, y): the box centre, except the apex-up triangle's, a third of the half-size lower."""
        return _centroid(self.shape, self.cx, self.cy, self.size)


def _box(cx: int, cy: int, size: int) -> tuple[int, int, int, int]:
    h = size // 2
    return (cx - h, cy - h, cx + h, cy + h)


def _centroid(shape: str, cx: int, cy: int, size: int) -> tuple[float, float]:
    drop = (size // 2) / 3 if shape == "triangle" else 0.0
    return (float(cx), cy + drop)


@dataclass(frozen=True)
class Scene:
    """What one image shows; for kind "relation", objects[0] <relation> objects[1]."""

    objects: tuple[Obj, ...]
    kind: str
    relation: str | None = None


@dataclass(frozen=True)
class Item:
    colour: str
    shape: str
    count: int = 1


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for. kind: single | relation | count | list | empty; relation is items[0] <rel> items[1]."""

    kind: str
    items: tuple[Item, ...]
    relation: str | None = None

    def wants(self) -> Counter:
        """How many objects of each (colour, shape) the prompt asks for."""
        want: Counter = Counter()
        for it in self.items:
            want[(it.colour, it.shape)] += it.count
        return want

    def canonical(self) -> Spec:
        """One form per meaning: relations as "left of"/"above", "one red circle" as "a red circle", lists sorted."""
        if self.kind == "relation":
            a, b = self.items
            flip = {"right of": "left of", "below": "above"}
            return Spec("relation", (b, a), flip[self.relation]) if self.relation in flip else self
        items = tuple(Item(c, s, n) for (c, s), n in sorted(self.wants().items()))
        if not items:
            return Spec("empty", ())
        if len(items) > 1:
            return Spec("list", items)
        return Spec("single" if items[0].count == 1 else "count", items)


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether centroid a is <relation> centroid b: the named axis's offset is positive and dominates (y grows down)."""
    along, across = _offsets(relation, a, b)
    return along > abs(across)


def _offsets(relation: str, a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    dx, dy = b[0] - a[0], b[1] - a[1]
    return {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]


def _clear(relation: str, a: Obj, b: Obj) -> bool:
    """A generated relation: REL_MARGIN px on its axis and at most half that offset across, so no judge can doubt it."""
    return _centroids_clear(relation, a.centroid, b.centroid)


def _centroids_clear(relation: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    along, across = _offsets(relation, a, b)
    return along >= REL_MARGIN and abs(across) <= along / 2


def _apart(a: Obj, b: Obj) -> bool:
    return _boxes_apart(a.box, b.box)


def _boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    return bx0 - ax1 > GAP or ax0 - bx1 > GAP or by0 - ay1 > GAP or ay0 - by1 > GAP


def _place(rng: np.random.Generator, pairs: list[tuple[str, str]], relation: str | None) -> tuple[Obj, ...]:
    """Rejection-sample sizes and positions until no two objects touch (and the relation is clear).

    Most tries are rejected (a relation's margin above all), so a try checks plain (cx, cy, size) tuples and
    the Obj are built once, for the kept one. Every try draws every object's size and position before any
    check: the generator's stream, and so every later scene of a seed, does not depend on how a check reads.
    """
    for _ in range(10_000):
        placed = []
        for _pair in pairs:
            size = SIZES[int(rng.integers(len(SIZES)))]
            lo, hi = BORDER + size // 2, SIDE - 1 - BORDER - size // 2
            placed.append((int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)), size))
        boxes = [_box(*p) for p in placed]
        if all(_boxes_apart(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]) and (
                relation is None or _centroids_clear(relation, _centroid(pairs[0][1], *placed[0]),
                                                     _centroid(pairs[1][1], *placed[1]))):
            return tuple(Obj(shape, colour, *p) for (colour, shape), p in zip(pairs, placed))
    raise RuntimeError(f"could not place {pairs} on a {SIDE}² canvas; lower SIZES or GAP")


def _pick(rng: np.random.Generator, pairs: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    return pairs[int(rng.integers(len(pairs)))]


def sample(rng: np.random.Generator, split: str, kind: str | None = None) -> Scene:
    """One scene of split "train" (no held-out pair) or "heldout" (at least one); kind uniform unless given."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {SPLITS}")
    kind = KINDS[int(rng.integers(len(KINDS)))] if kind is None else kind
    if kind not in KINDS + EXTRA_KINDS:
        raise ValueError(f"kind={kind!r}: choose one of {KINDS + EXTRA_KINDS}")
    if kind == "empty":
        return Scene((), kind)
    first = _pick(rng, HELDOUT if split == "heldout" else TRAIN_PAIRS)
    if kind == "list":
        pool = [p for p in (PAIRS if split == "heldout" else TRAIN_PAIRS) if p != first]
        picked = rng.choice(len(pool), size=2, replace=False)
        return Scene(_place(rng, [first] + [pool[int(i)] for i in picked], None), kind)
    if kind == "single":
        return Scene(_place(rng, [first], None), kind)
    if kind == "count":
        return Scene(_place(rng, [first] * int(rng.integers(1, MAX_COUNT + 1)), None), kind)
    # Two different pairs; in "heldout" the second may be any pair, and which one comes first is random.
    second = _pick(rng, tuple(p for p in (PAIRS if split == "heldout" else TRAIN_PAIRS) if p != first))
    pairs = [first, second] if rng.random() < 0.5 else [second, first]
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    return Scene(_place(rng, pairs, relation), kind, relation)


def render(scene: Scene) -> np.ndarray:
    """The scene as a [SIDE, SIDE, 3] uint8 RGB array; aliased PIL drawing keeps every pixel an exact palette colour."""
    img = Image.new("RGB", (SIDE, SIDE), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        x0, y0, x1, y1 = o.box
        fill = PALETTE[o.colour]
        if o.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([(o.cx, y0), (x1, y1), (x0, y1)], fill=fill)
    return np.asarray(img, dtype=np.uint8).copy()


def spec(scene: Scene) -> Spec:
    """What the scene's caption asks for."""
    objs = scene.objects
    if scene.kind == "count":
        return Spec("count", (Item(objs[0].colour, objs[0].shape, len(objs)),))
    return Spec(scene.kind, tuple(Item(o.colour, o.shape) for o in objs), scene.relation)


def _phrase(item: Item, numeral: bool = False) -> str:
    if item.count == 1 and not numeral:
        return f"a {item.colour} {item.shape}"
    word = NUMBERS[item.count - 1] if item.count <= len(NUMBERS) else str(item.count)
    return f"{word} {item.colour} {item.shape}{'s' if item.count > 1 else ''}"


def text(s: Spec) -> str:
    """The prompt for a spec; `parse(text(s)) == s`."""
    if s.kind == "empty":
        return "an empty image"
    if s.kind == "relation":
        return f"{_phrase(s.items[0])} {s.relation} {_phrase(s.items[1])}"
    if s.kind == "list":
        phrases = [_phrase(it) for it in s.items]
        return ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return _phrase(s.items[0], numeral=s.kind == "count")


def caption(scene: Scene) -> str:
    return text(spec(scene))


_PHRASE = re.compile(rf"(a|{'|'.join(NUMBERS)}|[1-9][0-9]*) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})(s?)")
_EXAMPLES = "'a red circle', 'a red circle left of a blue square' or 'two green triangles'"


def _item(phrase: str, prompt: str) -> tuple[Item, bool]:
    """One noun phrase as (item, whether it used a number word)."""
    m = _PHRASE.fullmatch(phrase)
    if not m:
        raise ValueError(f"prompt {prompt!r}: {phrase!r} is not '<a|number> <colour> <shape>' with colour in "
                         f"{COLOURS} and shape in {SHAPES}; write e.g. {_EXAMPLES}")
    word, colour, shape, plural = m.groups()
    n = 1 if word == "a" else NUMBERS.index(word) + 1 if word in NUMBERS else int(word)
    if (n > 1) != bool(plural):
        raise ValueError(f"prompt {prompt!r}: {phrase!r} mixes singular and plural; write e.g. 'two red circles'")
    return Item(colour, shape, n), word != "a"


def parse(prompt: str) -> Spec:
    """The prompt back into what it asks for; ValueError naming the prompt when it is outside the grammar."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt {prompt!r} is not a string; write e.g. {_EXAMPLES}")
    t = " ".join(prompt.lower().strip().rstrip(".").split())
    if t == "an empty image":
        return Spec("empty", ())
    for rel in RELATIONS:
        if f" {rel} " in t:
            (a, na), (b, nb) = (_item(p, prompt) for p in t.split(f" {rel} ", 1))
            if na or nb:
                raise ValueError(f"prompt {prompt!r}: a relation is between two single objects; write e.g. "
                                 f"'a red circle {rel} a blue square'")
            return Spec("relation", (a, b), rel)
    parts = re.split(r", | and ", t)
    items = [_item(p, prompt) for p in parts]
    if len(items) > 1:
        return Spec("list", tuple(it for it, _ in items))
    item, numeral = items[0]
    return Spec("count" if numeral else "single", (item,))


def heldout_captions() -> list[str]:
    """Every distinct caption `sample(rng, "heldout")` can write, sorted: 3 single objects, 9 counts and
    240 relations (ordered pairs of different colour-shape pairs, at least one held out, x 4 relations)."""
    out = set()
    for colour, shape in HELDOUT:
        out.add(text(Spec("single", (Item(colour, shape),))))
        out.update(text(Spec("count", (Item(colour, shape, n),))) for n in range(1, MAX_COUNT + 1))
    for a in PAIRS:
        for b in PAIRS:
            if a != b and (a in HELDOUT or b in HELDOUT):
                out.update(text(Spec("relation", (Item(*a), Item(*b)), r)) for r in RELATIONS)
    return sorted(out)


def make_dataset(n: int, seed: int, split: str) -> list[tuple[np.ndarray, str]]:
    """n (image, caption) pairs of a split; one Generator in sequence, so a larger n extends a smaller one."""
    rng = np.random.default_rng(seed)
    scenes = [sample(rng, split) for _ in range(n)]
    return [(render(s), caption(s)) for s in scenes]

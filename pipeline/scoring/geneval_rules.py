"""GenEval's compliance rules as pure functions: which detections count, and whether they satisfy a
prompt's metadata (`tag`, `include`, `exclude`). No models here (pipeline/scoring/geneval.py runs
the detector and the colour classifier and hands their results to these functions).

Ported in this project's words from GenEval's `evaluation/evaluate_images.py` (github.com/djghosh13/
geneval at af4902f; Ghosh, Hajishirzi, Schmidt, "GenEval", NeurIPS 2023), with its defaults:

- Which detections count (`keep`): per class, the detections scoring strictly above 0.3 (0.9 when the
  prompt's tag is `counting`), most confident first, at most 16 per class. No non-maximum suppression
  (GenEval's default `max_overlap` of 1 turns it off).
- `include` (all must hold): the class has at least `count` kept detections; with `color`, CLIP's
  colour of each of the `count` most confident ones, and at least `count` of them must be that colour;
  with `position: [relation, i]`, every one of those `count` objects must stand in `relation` to every
  object matched by the i-th clause (which must itself have passed; a failed clause matches nothing).
  The position is checked only when the colour (if any) passed.
- `exclude` (any fails): a class with at least `count` kept detections makes the image wrong (a
  counting prompt for 2 clocks excludes 3: a third clock above 0.9 fails it).
- Relations (`relation`): A's box centre minus B's, each axis shrunk towards 0 by 0.1 x (A's + B's
  size on that axis), divided by the length of the unshrunk offset; "left of" when x < -0.5, "right
  of" > 0.5, "above" y < -0.5, "below" > 0.5 (image y grows downwards); nothing when both shrunk axes
  are below 1e-3.

Class names are GenEval's (`evaluation/object_names.txt`): COCO's 80 instance classes in COCO's
order, with `mouse`, `remote` and `keyboard` renamed `computer mouse`, `tv remote` and `computer
keyboard`. Detectors are mapped to them by class index, never by their label strings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

THRESHOLD = 0.3  # a detection counts above this score ...
COUNTING_THRESHOLD = 0.9  # ... or above this one for prompts tagged "counting"
MAX_OBJECTS = 16  # per class, most confident first
POSITION_SHRINK = 0.1  # centre offsets shrink by this x the two boxes' sizes
RELATION_THRESHOLD = 0.5  # of the shrunk offset over the offset's length
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOR_TEMPLATES = ("a photo of a {color} {object}", "a photo of a {color}-colored {object}",
                   "a photo of a {color} object")
BACKGROUND = (153, 153, 153)  # GenEval's "#999": the grey an object is masked onto before CLIP sees it
RELATIONS = ("left of", "right of", "above", "below")
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")  # GenEval's six tags
CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush")

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels; x1, y1 one past the last pixel


@dataclass(frozen=True)
class Detection:
    """One detected instance: GenEval class name, score, box, and its binary mask [H, W] (for colour)."""

    name: str
    score: float
    box: Box
    mask: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Clause:
    """One `include` clause: at least `count` of `name` (of `color`; `position` = (relation, clause index))."""

    name: str
    count: int
    color: str | None = None
    position: tuple[str, int] | None = None


@dataclass(frozen=True)
class Request:
    """A prompt's GenEval metadata, checked."""

    tag: str
    include: tuple[Clause, ...]
    exclude: tuple[tuple[str, int], ...] = ()  # (class, count): this many or more makes the image wrong


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reasons: tuple[str, ...] = ()  # why not, one line per failed check (GenEval's `reason`)


# ------------------------------------------------------------------ reading a row's metadata
def _decoded(value: Any, what: str) -> Any:
    """A decoded JSON value, or JSON text decoded (Parquet users may store nested values as text)."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError as e:
            raise ValueError(f"GenEval {what} is text but not JSON ({e}): {str(value)[:80]!r}") from None
    return value


def _class_name(value: Any, what: str) -> str:
    if value not in CLASSES:
        raise ValueError(f"GenEval {what}: class {value!r} is not one of GenEval's 80 COCO classes "
                         "(evaluation/object_names.txt, e.g. 'computer mouse', 'tv remote', 'dining table')")
    return value


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise ValueError(f"GenEval {what}: count must be a whole number >= 1, not {value!r}")
    return int(value)


def _clause(item: Any, index: int) -> Clause:
    what = f"include[{index}]"
    if not isinstance(item, dict):
        raise ValueError(f"GenEval {what} must be an object like {{\"class\": \"cat\", \"count\": 1}}, not {item!r}")
    unknown = set(item) - {"class", "count", "color", "position"}
    if unknown or "class" not in item or "count" not in item:
        raise ValueError(f"GenEval {what} needs \"class\" and \"count\" (optional \"color\", \"position\"); "
                         f"got keys {sorted(item)}")
    color = item.get("color")
    if color is not None and color not in COLORS:
        raise ValueError(f"GenEval {what}: color {color!r} is not one of {', '.join(COLORS)}")
    position = item.get("position")
    if position is not None:
        if (not isinstance(position, (list, tuple)) or len(position) != 2 or position[0] not in RELATIONS
                or isinstance(position[1], bool) or not isinstance(position[1], (int, float))
                or position[1] != int(position[1]) or not 0 <= position[1] < index):
            raise ValueError(f"GenEval {what}: position must be [relation, index of an earlier include clause] "
                             f"with relation one of {', '.join(RELATIONS)}; got {position!r}")
        position = (position[0], int(position[1]))
    return Clause(_class_name(item["class"], what), _count(item["count"], what), color, position)


def parse_request(tag: Any, include: Any, exclude: Any = None) -> Request:
    """A Request from a row's `tag`, `include` and `exclude` (decoded JSON or JSON text; exclude may be
    missing). ValueError naming the field when they are not GenEval metadata."""
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"GenEval tag must be a non-empty string (one of {', '.join(TASKS)}), not {tag!r}")
    include = _decoded(include, "include")
    if not isinstance(include, list) or not include:
        raise ValueError(f"GenEval include must be a non-empty list of clauses, not {include!r}")
    exclude = _decoded(exclude, "exclude") if exclude is not None else []
    if not isinstance(exclude, list):
        raise ValueError(f"GenEval exclude must be a list of {{\"class\", \"count\"}} objects, not {exclude!r}")
    out = []
    for j, item in enumerate(exclude):
        if not isinstance(item, dict) or set(item) != {"class", "count"}:
            raise ValueError(f"GenEval exclude[{j}] must be {{\"class\": ..., \"count\": ...}}, not {item!r}")
        out.append((_class_name(item["class"], f"exclude[{j}]"), _count(item["count"], f"exclude[{j}]")))
    return Request(tag, tuple(_clause(item, i) for i, item in enumerate(include)), tuple(out))


# ------------------------------------------------------------------ the rules
def threshold_of(tag: str) -> float:
    return COUNTING_THRESHOLD if tag == "counting" else THRESHOLD


def keep(detections: Sequence[Detection], tag: str) -> dict[str, list[Detection]]:
    """The detections that count, by class: score > the tag's threshold, most confident first, at most
    MAX_OBJECTS per class (classes with none are absent)."""
    limit = threshold_of(tag)
    by_class: dict[str, list[Detection]] = {}
    for d in sorted(detections, key=lambda d: -d.score):
        if d.score > limit and len(by_class.setdefault(d.name, [])) < MAX_OBJECTS:
            by_class[d.name].append(d)
    return {name: ds for name, ds in by_class.items() if ds}


def relation(a: Box, b: Box) -> set[str]:
    """Where box `a` stands relative to box `b`: a subset of RELATIONS (empty when they are too close)."""
    offset = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2, (a[1] + a[3]) / 2 - (b[1] + b[3]) / 2)
    size = (abs(a[2] - a[0]) + abs(b[2] - b[0]), abs(a[3] - a[1]) + abs(b[3] - b[1]))
    shrunk = [math.copysign(max(abs(o) - POSITION_SHRINK * s, 0.0), o) if o else 0.0 for o, s in zip(offset, size)]
    if all(abs(v) < 1e-3 for v in shrunk):
        return set()
    length = math.hypot(*offset)
    dx, dy = shrunk[0] / length, shrunk[1] / length
    found = set()
    if dx < -RELATION_THRESHOLD:
        found.add("left of")
    if dx > RELATION_THRESHOLD:
        found.add("right of")
    if dy < -RELATION_THRESHOLD:
        found.add("above")
    if dy > RELATION_THRESHOLD:
        found.add("below")
    return found


ColourOf = Callable[[str, list[Detection]], list[str]]  # (class, detections) -> one colour per detection


def judge(objects: dict[str, list[Detection]], request: Request, colours: ColourOf) -> Verdict:
    """GenEval's verdict on the kept detections `objects` (see `keep`); `colours` names the colour of
    each detection it is given (called only for clauses with a colour whose count is met)."""
    reasons: list[str] = []
    matched: list[list[Detection] | None] = []  # per include clause: its objects, or None if it failed
    for clause in request.include:
        found = objects.get(clause.name, [])[:clause.count]
        ok = len(found) >= clause.count
        if not ok:
            reasons.append(f"expected {clause.name}>={clause.count}, found {len(found)}")
        if ok and clause.color is not None:
            seen = colours(clause.name, found)
            hits = seen.count(clause.color)
            if hits < clause.count:
                ok = False
                others = ", ".join(f"{seen.count(c)} {c}" for c in COLORS if c in seen)
                reasons.append(f"expected {clause.color} {clause.name}>={clause.count}, found {hits} "
                               f"{clause.color}; and {others}")
        if ok and clause.position is not None:
            wanted, target = clause.position
            targets = matched[target]
            if targets is None:
                ok = False
                reasons.append(f"no target for {clause.name} to be {wanted}")
            else:
                ok = _all_related(found, targets, wanted, clause.name, reasons)
        matched.append(found if ok else None)
    for name, count in request.exclude:
        n = len(objects.get(name, []))
        if n >= count:
            reasons.append(f"expected {name}<{count}, found {n}")
    return Verdict(not reasons, tuple(reasons))


def _all_related(found: list[Detection], targets: list[Detection], wanted: str, name: str,
                 reasons: list[str]) -> bool:
    """Every object of `found` stands `wanted` to every target; the first pair that does not is the reason."""
    for obj in found:
        for target in targets:
            seen = relation(obj.box, target.box)
            if wanted not in seen:
                reasons.append(f"expected {name} {wanted} target, found {' and '.join(sorted(seen))} target")
                return False
    return True

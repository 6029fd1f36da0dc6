"""The toy world (issue 16): generator, grammar, judge and describer, checked against the generator's ground truth."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pipeline.toy import judge, world
from pipeline.toy.world import HELDOUT, Item, Obj, Scene, Spec

N_JUDGED = 500


def _scenes(split: str, n: int, seed: int) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [world.sample(rng, split) for _ in range(n)]


@pytest.fixture(scope="module", params=world.SPLITS)
def judged(request):
    """N_JUDGED scenes of a split with their images and what the judge sees in them."""
    scenes = _scenes(request.param, N_JUDGED, seed=16)
    images = [world.render(s) for s in scenes]
    return request.param, scenes, images, [judge.detect(im) for im in images]


def test_dataset_is_deterministic_from_its_seed():
    a, b = world.make_dataset(30, seed=7, split="train"), world.make_dataset(30, seed=7, split="train")
    assert [c for _, c in a] == [c for _, c in b]
    assert all(np.array_equal(x, y) for (x, _), (y, _) in zip(a, b))
    assert a[0][0].shape == (64, 64, 3) and a[0][0].dtype == np.uint8
    other = world.make_dataset(30, seed=8, split="train")
    assert [c for _, c in other] != [c for _, c in a]
    # One generator in sequence: a longer dataset extends a shorter one.
    assert [c for _, c in world.make_dataset(10, seed=7, split="train")] == [c for _, c in a[:10]]


def test_every_kind_and_word_is_generated():
    scenes = _scenes("train", 600, seed=1) + _scenes("heldout", 600, seed=1)
    assert {s.kind for s in scenes} == set(world.KINDS)
    assert {s.relation for s in scenes if s.kind == "relation"} == set(world.RELATIONS)
    assert {len(s.objects) for s in scenes if s.kind == "count"} == {1, 2, 3}
    assert {o.pair for s in scenes for o in s.objects} == set(world.PAIRS)


def test_train_never_shows_a_heldout_pair_and_heldout_always_does():
    assert len(HELDOUT) == 3 and set(HELDOUT) <= set(world.PAIRS)
    # Every colour and every shape is still seen in training; only the pairings are new.
    assert {c for c, _ in world.TRAIN_PAIRS} == set(world.COLOURS)
    assert {s for _, s in world.TRAIN_PAIRS} == set(world.SHAPES)
    for s in _scenes("train", 2000, seed=2):
        assert not {o.pair for o in s.objects} & set(HELDOUT), world.caption(s)
        assert not set(world.parse(world.caption(s)).wants()) & set(HELDOUT), world.caption(s)
    for s in _scenes("heldout", 2000, seed=2):
        assert set(world.parse(world.caption(s)).wants()) & set(HELDOUT), world.caption(s)


def test_scenes_are_apart_inside_the_canvas_and_relations_are_clear():
    for s in _scenes("heldout", 1000, seed=3):
        for i, a in enumerate(s.objects):
            assert min(a.box) >= world.BORDER and max(a.box) <= world.SIDE - 1 - world.BORDER
            assert all(world._apart(a, b) for b in s.objects[i + 1:])
        if s.kind == "relation":
            a, b = s.objects
            assert a.pair != b.pair
            assert world.relation_holds(s.relation, a.centroid, b.centroid)
            assert not any(world.relation_holds(r, a.centroid, b.centroid) for r in world.RELATIONS if r != s.relation)


def test_parse_inverts_caption():
    for s in _scenes("train", 300, seed=4) + _scenes("heldout", 300, seed=4):
        cap = world.caption(s)
        assert world.parse(cap) == world.spec(s), cap
        assert world.text(world.parse(cap)) == cap
    spec = world.parse("A red circle, two blue squares and a green triangle.")
    assert spec == Spec("list", (Item("red", "circle"), Item("blue", "square", 2), Item("green", "triangle")))
    assert world.text(spec) == "a red circle, two blue squares and a green triangle"
    assert world.parse("an empty image") == Spec("empty", ())
    assert world.parse("one red circle").canonical() == world.parse("a red circle")
    assert world.parse("a red circle right of a blue square").canonical() == world.parse(
        "a blue square left of a red circle")


@pytest.mark.parametrize("prompt", ["a purple circle", "a red hexagon", "two red circle", "a red circles",
                                    "a red circle next to a blue square", "two red circles left of a blue square",
                                    "", "red circle", "a red circle and", "zero red circles"])
def test_a_prompt_outside_the_grammar_raises_naming_it(prompt):
    with pytest.raises(ValueError, match="prompt"):
        world.parse(prompt)
    if prompt:
        with pytest.raises(ValueError, match=prompt):
            world.parse(prompt)


def test_bad_split_or_kind_raises():
    with pytest.raises(ValueError, match="split"):
        world.sample(np.random.default_rng(0), "test")
    with pytest.raises(ValueError, match="kind"):
        world.sample(np.random.default_rng(0), "train", kind="pairs")


def test_judge_agrees_with_the_ground_truth(judged):
    """Exact agreement: the same objects (colour, shape, centroid within 1 px) and the caption fully complied with."""
    split, scenes, _, found = judged
    agree = 0
    for s, dets in zip(scenes, found):
        same = Counter(d.pair for d in dets) == Counter(o.pair for o in s.objects)
        near = same and all(min(np.hypot(d.cx - o.centroid[0], d.cy - o.centroid[1])
                                for o in s.objects if o.pair == d.pair) <= 1.0 for d in dets)
        agree += near and judge.grade(world.parse(world.caption(s)), dets)["exact"]
    rate = agree / len(scenes)
    print(f"judge agreement on {len(scenes)} {split} images: {rate:.3f}")
    assert rate >= 0.98


def test_describer_round_trips(judged):
    split, scenes, images, found = judged
    hits = sum(world.parse(judge.describe_found(d)).canonical() == world.spec(s).canonical()
               for s, d in zip(scenes, found))
    rate = hits / len(scenes)
    print(f"describer round trip on {len(scenes)} {split} images: {rate:.3f}")
    assert rate >= 0.98
    # The public entry point agrees, and its caption is fully complied with by the image it describes.
    for im in images[:20]:
        assert judge.compliance(judge.describe(im), im)["exact"]


def _wrong_prompts(s: Scene) -> list[Spec]:
    """Prompts the scene does not satisfy: another colour, another shape, another relation, another count."""
    sp = world.spec(s)
    first = sp.items[0]
    other_colour = next(c for c in world.COLOURS if c != first.colour)
    other_shape = next(x for x in world.SHAPES if x != first.shape)
    wrong = [Spec(sp.kind, (Item(other_colour, first.shape, first.count),) + sp.items[1:], sp.relation),
             Spec(sp.kind, (Item(first.colour, other_shape, first.count),) + sp.items[1:], sp.relation)]
    if s.kind == "relation":
        wrong += [Spec("relation", sp.items, r) for r in world.RELATIONS if r != s.relation]
    if s.kind == "count":
        wrong += [Spec("count", (Item(first.colour, first.shape, n),)) for n in (1, 2, 3, 4) if n != first.count]
    return wrong


def test_wrong_prompts_score_below_one(judged):
    _, scenes, _, found = judged
    for s, dets in list(zip(scenes, found))[:200]:
        for spec in _wrong_prompts(s):
            g = judge.grade(spec, dets)
            assert 0.0 <= g["score"] < 1.0 and not g["exact"], (world.caption(s), world.text(spec), g)


def _image(*objs: Obj) -> np.ndarray:
    return world.render(Scene(tuple(objs), "single"))


def test_partial_credit_is_the_fraction_of_checks_passed():
    red_circle, blue_square = Obj("circle", "red", 16, 32, 13), Obj("square", "blue", 48, 32, 13)
    both = _image(red_circle, blue_square)
    assert judge.compliance("a red circle left of a blue square", both)["score"] == 1.0
    assert judge.compliance("a red circle right of a blue square", both)["score"] == pytest.approx(2 / 3)
    assert judge.compliance("a green circle left of a blue square", both)["score"] == pytest.approx(1.5 / 3)
    assert judge.compliance("a red circle", both)["score"] == 0.5  # one right, one extra
    assert judge.compliance("two red circles", _image(red_circle))["score"] == 0.5  # one missing
    assert judge.compliance("a red square", _image(red_circle))["score"] == 0.5  # colour right, shape wrong
    assert judge.compliance("a green triangle", _image(red_circle))["score"] == 0.0
    white = _image()
    assert judge.compliance("an empty image", white)["exact"] and judge.compliance("a red circle", white)["score"] == 0
    out = judge.compliance(Spec("single", (Item("red", "circle"),)), both)
    assert set(out) >= {"score", "exact", "objects"} and out["seen"] == "a red circle left of a blue square"
    assert [(o["colour"], o["shape"]) for o in out["objects"]] == [("red", "circle"), ("blue", "square")]


def test_describer_forms():
    tri, sq, circ = Obj("triangle", "yellow", 12, 12, 13), Obj("square", "green", 50, 12, 13), Obj(
        "circle", "blue", 30, 50, 17)
    assert judge.describe(_image()) == "an empty image"
    assert judge.describe(_image(tri)) == "a yellow triangle"
    assert judge.describe(_image(circ, Obj("square", "green", 30, 12, 13))) == "a green square above a blue circle"
    assert judge.describe(_image(tri, sq, circ)) == "a yellow triangle, a blue circle and a green square"
    assert judge.describe(_image(tri, Obj("triangle", "yellow", 40, 40, 17))) == "two yellow triangles"


def test_judge_reads_other_formats_and_ignores_specks():
    s = world.sample(np.random.default_rng(5), "heldout", kind="relation")
    im, cap = world.render(s), world.caption(s)
    assert judge.compliance(cap, Image.fromarray(im))["exact"]
    assert judge.compliance(cap, im.astype(np.float32) / 255)["exact"]
    big = im.repeat(2, axis=0).repeat(2, axis=1)  # a 128² model output
    assert judge.compliance(cap, big)["exact"]
    specks = im.copy()
    specks[0:2, 0:2] = world.PALETTE["red"]  # below MIN_AREA
    specks[62:64, 30:32] = (128, 0, 128)  # near no palette colour
    assert judge.compliance(cap, specks)["exact"]
    with pytest.raises(ValueError, match="RGB"):
        judge.detect(im[..., 0])

"""GenEval's judge (pipeline/scoring/geneval*.py): its rules on hand-built detections, with the
verdicts worked out from GenEval's evaluation/evaluate_images.py; then the tiny random Mask2Former
and CLIP through the `geneval` scorer, the detector's outputs set at the model's output seam
(class logits and mask logits) so that every task gets a true and a false verdict from the real
post-processing, masks, boxes and colour classifier."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.scoring import geneval_rules as R
from pipeline.scoring.geneval_rules import Detection, parse_request


def req(tag: str, include: list, exclude: list | None = None) -> R.Request:
    return parse_request(tag, include, exclude)


def objects(*detections: Detection, tag: str = "single_object") -> dict[str, list[Detection]]:
    return R.keep(list(detections), tag)


def no_colours(name, found):
    raise AssertionError("no colour was asked")


# ================================================================== which detections count
def test_keep_thresholds_are_strict_per_tag_and_at_most_16_per_class():
    dets = [Detection("cat", 0.3, (0, 0, 1, 1)), Detection("cat", 0.31, (0, 0, 1, 1)),
            Detection("dog", 0.9, (0, 0, 1, 1)), Detection("dog", 0.95, (0, 0, 1, 1))]
    assert {k: [d.score for d in v] for k, v in R.keep(dets, "two_object").items()} == {
        "cat": [0.31], "dog": [0.95, 0.9]}  # 0.3 is not above 0.3; most confident first
    assert {k: [d.score for d in v] for k, v in R.keep(dets, "counting").items()} == {"dog": [0.95]}
    many = [Detection("clock", 0.5 + i / 100, (i, 0, i + 1, 1)) for i in range(20)]
    kept = R.keep(many, "single_object")["clock"]
    assert len(kept) == 16 and [d.score for d in kept] == sorted((d.score for d in many), reverse=True)[:16]


# ================================================================== every task, with GenEval's edge cases
BENCH = Detection("bench", 0.5, (10, 10, 50, 50))


def test_single_object():
    r = req("single_object", [{"class": "bench", "count": 1}])
    assert R.judge(objects(BENCH), r, no_colours) == R.Verdict(True)
    low = Detection("bench", 0.29, (10, 10, 50, 50))
    assert R.judge(objects(low), r, no_colours) == R.Verdict(False, ("expected bench>=1, found 0",))
    assert not R.judge(objects(Detection("cow", 0.99, (0, 0, 9, 9))), r, no_colours).correct


def test_two_object():
    r = req("two_object", [{"class": "bench", "count": 1}, {"class": "sports ball", "count": 1}])
    ball = Detection("sports ball", 0.4, (60, 60, 70, 70))
    assert R.judge(objects(BENCH, ball), r, no_colours).correct
    assert R.judge(objects(BENCH), r, no_colours).reasons == ("expected sports ball>=1, found 0",)


def test_counting_an_extra_object_above_the_counting_threshold_fails_it():
    """"a photo of two clocks": include 2 clocks, exclude 3, threshold 0.9."""
    r = req("counting", [{"class": "clock", "count": 2}], [{"class": "clock", "count": 3}])

    def clocks(*scores):
        return objects(*(Detection("clock", s, (i * 20, 0, i * 20 + 10, 10)) for i, s in enumerate(scores)),
                       tag="counting")

    assert R.judge(clocks(0.95, 0.93), r, no_colours).correct
    assert R.judge(clocks(0.95, 0.93, 0.91), r, no_colours) == R.Verdict(False, ("expected clock<3, found 3",))
    assert R.judge(clocks(0.95, 0.93, 0.85), r, no_colours).correct  # the third is below 0.9: not counted
    assert R.judge(clocks(0.95, 0.85), r, no_colours).reasons == ("expected clock>=2, found 1",)


def test_colors_are_asked_of_the_most_confident_objects_only():
    r = req("colors", [{"class": "apple", "count": 1, "color": "red"}])
    green = Detection("apple", 0.9, (0, 0, 10, 10))
    red = Detection("apple", 0.8, (20, 0, 30, 10))
    scene = {green.box: "green", red.box: "red"}
    asked = []

    def colours(name, found):
        asked.append((name, [d.box for d in found]))
        return [scene[d.box] for d in found]

    assert R.judge(objects(red), r, colours).correct
    v = R.judge(objects(green, red), r, colours)  # only the most confident apple is looked at: green
    assert v == R.Verdict(False, ("expected red apple>=1, found 0 red; and 1 green",))
    assert asked[-1] == ("apple", [green.box])


def test_color_attribution_a_colour_on_the_wrong_object_fails():
    """"a purple wine glass and a black apple": both colours present, each on the other object."""
    r = req("color_attr", [{"class": "wine glass", "count": 1, "color": "purple"},
                           {"class": "apple", "count": 1, "color": "black"}])
    glass, apple = Detection("wine glass", 0.7, (0, 0, 10, 30)), Detection("apple", 0.6, (40, 20, 50, 30))
    for scene, correct in (({glass.box: "purple", apple.box: "black"}, True),
                           ({glass.box: "black", apple.box: "purple"}, False)):
        v = R.judge(objects(glass, apple), r, lambda name, found, s=scene: [s[d.box] for d in found])
        assert v.correct is correct
    assert v.reasons == ("expected purple wine glass>=1, found 0 purple; and 1 black",
                         "expected black apple>=1, found 0 black; and 1 purple")


# "a dog right of a teddy bear": the dog's box centre minus the teddy's, shrunk by 0.1 x (their widths
# + heights), over the unshrunk offset's length, must exceed 0.5. Both boxes 100 x 100: the shrink is 20.
TEDDY = Detection("teddy bear", 0.5, (0, 0, 100, 100))
RIGHT_OF_TEDDY = req("position", [{"class": "teddy bear", "count": 1},
                                  {"class": "dog", "count": 1, "position": ["right of", 0]}])


@pytest.mark.parametrize("dx, dy, correct", [
    (41, 0, True),    # (41 - 20) / 41 = 0.512: just inside
    (40, 0, False),   # (40 - 20) / 40 = 0.500: on the band, not beyond it
    (60, 40, True),   # (60 - 20) / hypot(60, 40) = 0.555
    (50, 40, False),  # (50 - 20) / hypot(50, 40) = 0.469: clearly right of it, yet outside the band
    (-80, 0, False),  # left of it
])
def test_position_just_inside_and_outside_the_band(dx, dy, correct):
    dog = Detection("dog", 0.6, (dx, dy, dx + 100, dy + 100))
    v = R.judge(objects(TEDDY, dog), RIGHT_OF_TEDDY, no_colours)
    assert v.correct is correct
    expected = (dx - 20) / math.hypot(dx, dy) if dx > 0 else -1
    assert (expected > 0.5) is correct


def test_relations_and_an_overlap_that_has_none():
    assert R.relation((0, 0, 10, 10), (100, 0, 110, 10)) == {"left of"}
    assert R.relation((0, 100, 10, 110), (0, 0, 10, 10)) == {"below"}
    assert R.relation((100, 100, 110, 110), (0, 0, 10, 10)) == {"right of", "below"}  # 0.636 on each axis
    assert R.relation((0, 0, 100, 100), (5, 5, 105, 105)) == set()  # the shrink swallows the offset


def test_position_without_its_target_and_every_pair_must_hold():
    dog = Detection("dog", 0.6, (200, 0, 300, 100))
    assert R.judge(objects(dog), RIGHT_OF_TEDDY, no_colours).reasons == (
        "expected teddy bear>=1, found 0", "no target for dog to be right of")
    two = req("position", [{"class": "teddy bear", "count": 1},
                           {"class": "dog", "count": 2, "position": ["right of", 0]}])
    second = Detection("dog", 0.55, (30, 0, 130, 100))  # (30 - 20) / 30 < 0.5
    assert R.judge(objects(TEDDY, dog, Detection("dog", 0.55, (400, 0, 500, 100))), two, no_colours).correct
    assert R.judge(objects(TEDDY, dog, second), two, no_colours).reasons == (
        "expected dog right of target, found  target",)


def test_a_failed_colour_skips_the_position_check():
    """GenEval checks a clause's position only when its colour passed: a blue dog left of the teddy, asked
    to be a red dog right of it, gets the colour reason alone (and no target for a later clause)."""
    r = req("position", [{"class": "teddy bear", "count": 1},
                         {"class": "dog", "count": 1, "color": "red", "position": ["right of", 0]}])
    dog = Detection("dog", 0.6, (-200, 0, -100, 100))
    v = R.judge(objects(TEDDY, dog), r, lambda name, found: ["blue"] * len(found))
    assert v == R.Verdict(False, ("expected red dog>=1, found 0 red; and 1 blue",))
    assert R.judge(objects(TEDDY, dog), r, lambda name, found: ["red"] * len(found)).reasons == (
        "expected dog right of target, found left of target",)


# ================================================================== the row's metadata
def test_metadata_as_decoded_json_or_as_json_text():
    include = [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}]
    assert parse_request("position", include) == parse_request("position", json.dumps(include), None)
    assert parse_request("position", include) == RIGHT_OF_TEDDY
    counting = parse_request("counting", '[{"class": "clock", "count": 2}]', '[{"class": "clock", "count": 3}]')
    assert counting.exclude == (("clock", 3),)
    for include, needle in (([{"class": "mouse", "count": 1}], "not one of GenEval's 80"),
                            ([{"class": "cat", "count": 1, "color": "teal"}], "color 'teal'"),
                            ([{"class": "cat", "count": 0}], "count must be"),
                            ([{"class": "cat", "count": 1, "position": ["left of", 0]}], "earlier include"),
                            ([{"class": "cat"}], "needs \"class\" and \"count\""),
                            ([], "non-empty list"), ("[{", "not JSON")):
        with pytest.raises(ValueError, match=needle):
            parse_request("single_object", include)


def test_geneval_classes_are_cocos_by_index_with_its_three_renames():
    from pipeline.models.architectures import COCO_LABELS

    renamed = {i: (a, b) for i, (a, b) in enumerate(zip(COCO_LABELS, R.CLASSES)) if a != b}
    assert len(R.CLASSES) == 80 and renamed == {
        64: ("mouse", "computer mouse"), 65: ("remote", "tv remote"), 66: ("keyboard", "computer keyboard")}


# ================================================================== the tiny models through the scorer
SIZE = 64  # image side; the detector sees it at 800x800, its mask logits are 200x200 (stride 4)


@dataclass
class Obj:
    coco: int  # class index
    prob: float  # the class probability the detector gives it
    rect: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels (multiples of 16: exact on the mask grid)


def set_outputs(scene: list[Obj], out, size=(SIZE, SIZE)):
    """The detector's outputs for one image of `size` (width, height) holding `scene`: query q predicts
    scene[q] (class logits giving it `prob`; mask logits +20 inside its rectangle, -20 outside); the
    other queries predict no object."""
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerForUniversalSegmentationOutput

    b, q, h, w = out.masks_queries_logits.shape
    classes = out.class_queries_logits.shape[-1]  # 80 + "no object"
    logits = torch.zeros(b, q, classes)
    logits[..., -1] = 20.0
    masks = torch.full((b, q, h, w), -20.0)
    for k, o in enumerate(scene):
        logits[:, k, -1] = 0.0
        logits[:, k, o.coco] = math.log((classes - 1) * o.prob / (1 - o.prob))  # softmax gives o.prob
        x0, x1 = (round(v * w / size[0]) for v in o.rect[::2])
        y0, y1 = (round(v * h / size[1]) for v in o.rect[1::2])
        masks[:, k, y0:y1, x0:x1] = 20.0
    return Mask2FormerForUniversalSegmentationOutput(class_queries_logits=logits, masks_queries_logits=masks)


@contextmanager
def detector_sees(model, scene: list[Obj], size=(SIZE, SIZE)):
    """Replace the model's outputs (a forward hook at its output seam) for the duration."""
    handle = model.register_forward_hook(lambda module, args, out: set_outputs(scene, out, size))
    try:
        yield
    finally:
        handle.remove()


def paint(scene: list[Obj], fills: list[tuple[int, int, int]], size=(SIZE, SIZE)) -> np.ndarray:
    image = np.full((size[1], size[0], 3), 200, dtype=np.uint8)
    for o, fill in zip(scene, fills):
        x0, y0, x1, y1 = o.rect
        image[y0:y1, x0:x1] = fill
    return image


@pytest.fixture(scope="module")
def judge_scorers(tiny_cache):
    from pipeline.config import ScoringConfig
    from pipeline.scoring.scorers import load_scorers

    return load_scorers(ScoringConfig(scorers=["geneval"]), "cpu")


def verdict(scorers, image, scene, tag, include, exclude=None):
    extra = {"tag": tag, "include": include, "exclude": exclude}
    with detector_sees(scorers.geneval.detector.model, scene, (image.shape[1], image.shape[0])):
        ((scores, errors),) = result = scorers.score([image], ["p"], [extra])
    assert errors == {}, errors
    return scores["geneval"], result[0].details["geneval"]


def reference_colour(image: np.ndarray, mask: np.ndarray, box, name: str) -> str:
    """GenEval's colour, computed apart from the scorer: the object on #999 grey cropped to its box,
    CLIP image features against per-colour means of the three templates' normalised text features."""
    from transformers import CLIPModel, CLIPProcessor

    from pipeline.scoring.tiny import tiny_clip

    model = CLIPModel.from_pretrained(str(tiny_clip()), use_safetensors=True).eval()
    proc = CLIPProcessor.from_pretrained(str(tiny_clip()))
    x0, y0, x1, y1 = (int(v) for v in box)
    crop = np.where(mask[..., None], image, 153).astype(np.uint8)[y0:y1, x0:x1]
    colours = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
    with torch.no_grad():
        img = model.get_image_features(**proc(images=[crop], return_tensors="pt"))
        img = img if isinstance(img, torch.Tensor) else img.pooler_output
        weights = []
        for c in colours:
            texts = [f"a photo of a {c} {name}", f"a photo of a {c}-colored {name}", f"a photo of a {c} object"]
            t = model.get_text_features(**proc(text=texts, padding=True, return_tensors="pt"))
            t = torch.nn.functional.normalize(t if isinstance(t, torch.Tensor) else t.pooler_output, dim=-1).mean(0)
            weights.append(t / t.norm())
    return colours[int((torch.nn.functional.normalize(img, dim=-1) @ torch.stack(weights).T).argmax())]


def test_detections_come_from_the_real_post_processing_with_boxes_from_masks(judge_scorers):
    scene = [Obj(13, 0.99, (16, 16, 48, 32)), Obj(64, 0.6, (0, 48, 16, 64))]  # bench; COCO's "mouse"
    image = paint(scene, [(255, 0, 0), (0, 0, 255)])
    score, seen = verdict(judge_scorers, image, scene, "two_object",
                          [{"class": "bench", "count": 1}, {"class": "computer mouse", "count": 1}])
    assert score == 1.0 and seen["counts"] == {"bench": 1, "computer mouse": 1}  # mapped by index
    for o, name in zip(scene, ("bench", "computer mouse")):
        (found,) = seen["objects"][name]
        assert found["box"] == pytest.approx(o.rect, abs=1)
        assert found["score"] == pytest.approx(o.prob, abs=0.02)  # class probability x mean mask probability


def test_a_landscape_image_maps_the_detectors_grid_back_onto_the_image(judge_scorers):
    """A 64 x 48 image (SDXL's 1216 x 832 is landscape too) reaches the detector resized to 1088 x 800
    (shorter side 800, the longer one rounded to a multiple of 32, not padded): objects at the image's
    left and right edges come back with boxes on those edges, and their relation is GenEval's."""
    scene = [Obj(16, 0.95, (0, 0, 16, 16)), Obj(13, 0.95, (48, 16, 64, 48))]  # a dog; a bench
    image = paint(scene, [(90, 60, 30)] * 2, size=(64, 48))
    score, seen = verdict(judge_scorers, image, scene, "position",
                          [{"class": "dog", "count": 1}, {"class": "bench", "count": 1, "position": ["right of", 0]}])
    assert score == 1.0, seen["reason"]
    assert seen["objects"]["dog"][0]["box"] == pytest.approx([0, 0, 16, 16], abs=1)
    assert seen["objects"]["bench"][0]["box"] == pytest.approx([48, 16, 64, 48], abs=1)

@pytest.mark.parametrize("task, scene, include, exclude, wanted", [
    ("single_object", [Obj(13, 0.99, (16, 16, 48, 48))], [{"class": "bench", "count": 1}], None, 1.0),
    ("single_object", [Obj(13, 0.99, (16, 16, 48, 48))], [{"class": "cow", "count": 1}], None, 0.0),
    ("single_object", [Obj(13, 0.25, (16, 16, 48, 48))], [{"class": "bench", "count": 1}], None, 0.0),
    ("two_object", [Obj(13, 0.99, (0, 0, 32, 32)), Obj(32, 0.9, (32, 32, 64, 64))],
     [{"class": "bench", "count": 1}, {"class": "sports ball", "count": 1}], None, 1.0),
    ("two_object", [Obj(13, 0.99, (0, 0, 32, 32))],
     [{"class": "bench", "count": 1}, {"class": "sports ball", "count": 1}], None, 0.0),
    ("counting", [Obj(74, 0.99, (0, 0, 16, 16)), Obj(74, 0.99, (32, 0, 48, 16)), Obj(74, 0.6, (0, 32, 16, 48))],
     [{"class": "clock", "count": 2}], [{"class": "clock", "count": 3}], 1.0),  # the third is below 0.9
    ("counting", [Obj(74, 0.99, (0, 0, 16, 16)), Obj(74, 0.99, (32, 0, 48, 16)), Obj(74, 0.99, (0, 32, 16, 48))],
     [{"class": "clock", "count": 2}], [{"class": "clock", "count": 3}], 0.0),  # a third clock above 0.9
    ("position", [Obj(77, 0.9, (0, 16, 16, 48)), Obj(16, 0.9, (48, 16, 64, 48))],
     [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}], None, 1.0),
    ("position", [Obj(77, 0.9, (0, 16, 16, 48)), Obj(16, 0.9, (48, 16, 64, 48))],
     [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}], None, 0.0),
])
def test_tasks_through_the_tiny_models(judge_scorers, task, scene, include, exclude, wanted):
    image = paint(scene, [(90, 60, 30)] * len(scene))
    score, seen = verdict(judge_scorers, image, scene, task, json.dumps(include),
                          json.dumps(exclude) if exclude else None)  # as Parquet users store them
    assert score == wanted, seen["reason"]
    assert seen["correct"] is (wanted == 1.0) and seen["threshold"] == (0.9 if task == "counting" else 0.3)


def _colours_of(scorers, image, scene):
    """What the tiny CLIP calls each scene object, computed apart from the scorer (masks and boxes from
    the detector's own detections)."""
    with detector_sees(scorers.geneval.detector.model, scene), torch.inference_mode():
        found = scorers.geneval.detector.detect([Image.fromarray(image)])[0]
    by_class = {d.name: d for d in found}
    return [reference_colour(image, by_class[R.CLASSES[o.coco]].mask, by_class[R.CLASSES[o.coco]].box,
                             R.CLASSES[o.coco]) for o in scene]


def test_colors_and_color_attribution_through_the_tiny_models(judge_scorers):
    scene = [Obj(40, 0.95, (0, 0, 32, 64)), Obj(47, 0.95, (32, 16, 64, 48))]  # wine glass, apple
    image = paint(scene, [(250, 20, 20), (20, 20, 250)])
    glass, apple = _colours_of(judge_scorers, image, scene)
    assert glass != apple, "pick fills the tiny CLIP tells apart"
    other = next(c for c in R.COLORS if c not in (glass, apple))
    score, seen = verdict(judge_scorers, image, scene[:1], "colors",
                          [{"class": "wine glass", "count": 1, "color": glass}])
    assert score == 1.0 and seen["objects"]["wine glass"][0]["color"] == glass
    assert verdict(judge_scorers, image, scene[:1], "colors",
                   [{"class": "wine glass", "count": 1, "color": other}])[0] == 0.0
    both = [{"class": "wine glass", "count": 1, "color": glass}, {"class": "apple", "count": 1, "color": apple}]
    swapped = [{"class": "wine glass", "count": 1, "color": apple}, {"class": "apple", "count": 1, "color": glass}]
    assert verdict(judge_scorers, image, scene, "color_attr", both)[0] == 1.0
    score, seen = verdict(judge_scorers, image, scene, "color_attr", swapped)  # each colour on the other object
    assert score == 0.0 and seen["reason"].count("expected") == 2


def test_the_colour_classifier_sees_the_object_on_grey_cropped_to_its_box():
    from pipeline.scoring.geneval import mask_box, on_grey

    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:20, 10:30] = True
    mask[20:30, 10:15] = True  # an L: its box holds pixels outside the object
    box = mask_box(mask)
    assert box == (10, 5, 30, 30)  # x0, y0, one past x1, one past y1 (mmdetection's mask2bbox)
    crop = np.asarray(on_grey(Image.fromarray(image), Detection("cat", 0.5, box, mask)))
    assert crop.shape == (25, 20, 3)
    inside = mask[5:30, 10:30]
    assert (crop[inside] == image[5:30, 10:30][inside]).all() and (crop[~inside] == 153).all()


def test_rows_without_metadata_are_per_sample_errors(judge_scorers):
    image = paint([], [])
    results = judge_scorers.score([image, image], ["a", "b"], [None, {"tag": "single_object",
                                                                       "include": [{"class": "cat", "count": 1}]}])
    assert results[0].scores == {"geneval": None} and "input.extra_columns" in results[0].errors["geneval"]
    assert results[1].scores == {"geneval": 0.0} and results[1].errors == {}  # a random detector sees no cat


# ================================================================== a bench detector: the job and the benchmark
@pytest.fixture(scope="module")
def bench_detector(tiny_cache, tmp_path_factory) -> str:
    """A Mask2Former of the tiny one's structure with its heads set so that every query is a bench
    (class probability ~0.996) whose mask is the whole image, saved as a local model directory with the
    tiny one's image processor: loaded by from_pretrained like any detector, in Ray actors too. Every
    image then holds 8 benches (its 8 queries), each with the whole image as its box."""
    import shutil

    from transformers import Mask2FormerForUniversalSegmentation

    from pipeline.scoring.tiny import MASK2FORMER_QUERIES, mask2former_config, tiny_mask2former

    src = tiny_mask2former()
    # Its verdicts come from the heads set below alone, whatever the rest computes: the rest is as narrow as
    # Mask2Former allows (the pixel decoder's GroupNorm(32) sets 32), since the benchmark test runs it on 36
    # images at the detector's 800² (the tiny one's widths cost a fifth more)
    model = Mask2FormerForUniversalSegmentation(mask2former_config(
        backbone_config={"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 7},
        feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32, encoder_layers=1,
        decoder_layers=1, num_attention_heads=1, dim_feedforward=32, num_queries=MASK2FORMER_QUERIES)).eval()
    with torch.no_grad():
        model.class_predictor.weight.zero_()
        model.class_predictor.bias.zero_()
        model.class_predictor.bias[R.CLASSES.index("bench")] = 10.0
        # mask logits = <query's mask embedding, pixel embedding>: both constant v, so |v|^2 > 0 everywhere
        last = model.model.transformer_module.decoder.mask_predictor.mask_embedder.layers[-1].layers[0]
        projection = model.model.pixel_level_module.decoder.mask_projection
        for layer in (last, projection):
            layer.weight.zero_()
            layer.bias.fill_(1.0)
    out = tmp_path_factory.mktemp("bench-detector")
    model.save_pretrained(str(out), safe_serialization=True)
    shutil.copy(src / "preprocessor_config.json", out / "preprocessor_config.json")
    return str(out)


GENEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "geneval" / "evaluation_metadata.jsonl"
needs_geneval = pytest.mark.skipif(not GENEVAL.is_file(), reason="GenEval's evaluation_metadata.jsonl is not "
                                   "next to the repository (../shared/data/geneval)")
# Lines of GenEval's file (1-based) and the verdict the bench detector must get on each: it sees 8
# benches, each the whole image.
REAL = {1: 1.0,    # single_object: a bench
        2: 0.0,    # single_object: a cow
        81: 0.0,   # two_object: a bench and a sports ball
        256: 0.0,  # counting: three benches (exclude 4: the 8 benches fail it)
        354: 0.0,  # position: a dog right of a teddy bear (the mixed list ["right of", 0])
        408: 0.0,  # position: a donut right of a bench
        353: 0.0,  # colors: a red cake
        474: 0.0}  # color_attr
# one hand-written line: a counting prompt the 8 benches satisfy
EIGHT = {"tag": "counting", "include": [{"class": "bench", "count": 8}], "exclude": [{"class": "bench", "count": 9}],
         "prompt": "a photo of eight benches"}


def real_lines(path: Path, lines, extra: list[dict] = ()) -> tuple[Path, dict[str, float]]:
    """A JSON Lines file of the given lines of GenEval's file, verbatim (plus `extra` objects), and the
    expected verdict per prompt."""
    text = GENEVAL.read_text().splitlines()
    chosen = [text[i - 1] for i in lines] + [json.dumps(e) for e in extra]
    path.write_text("\n".join(chosen) + "\n")
    wanted = {json.loads(text[i - 1])["prompt"]: REAL[i] for i in lines}
    wanted.update({e["prompt"]: 1.0 for e in extra})
    return path, wanted


@needs_geneval
def test_every_row_of_genevals_file_reaches_the_judge_as_a_request():
    """The job's source reads GenEval's file as it is (input.extra_columns=[tag,include,exclude]) and
    every one of its 553 rows is a valid request: 6 tasks, counting rows with their exclude."""
    from collections import Counter

    from pipeline.config import InputConfig
    from pipeline.report.evaluation import read_prompts
    from pipeline.scoring.geneval import request_of

    prompts, info = read_prompts(InputConfig(path=str(GENEVAL), extra_columns=["tag", "include", "exclude"]))
    assert len(prompts) == 553 and info["rejected"] == 0
    requests = [request_of(p.extra) for p in prompts]
    assert Counter(r.tag for r in requests) == {"position": 100, "color_attr": 100, "two_object": 99, "colors": 94,
                                                "single_object": 80, "counting": 80}
    assert all(r.exclude for r in requests if r.tag == "counting")
    assert requests[353].include[1].position == ("right of", 0)  # line 354: the mixed list
    assert len({p.prompt_id for p in prompts}) == 553


@needs_geneval
def test_a_job_judges_genevals_rows_and_records_what_it_saw(bench_detector, tmp_path):
    """The job's plan and worker (in process: the seam is the row data reaching the scorer, which Ray
    does not carry; tests/test_gate.py runs a judged job on Ray) with the tiny SDXL, 32x32, 1 step on
    lines of GenEval's own file: their tag/include/exclude reach the scorer through
    input.extra_columns, each sample gets its verdict as scores.geneval and what the judge saw as
    score_details.geneval."""
    import tarfile

    from test_generate import make_cfg, run_in_process

    from pipeline.data.layout import committed_shards
    from pipeline.data.storage import open_location

    inp, wanted = real_lines(tmp_path / "geneval.jsonl", [1, 2, 256, 354])
    out = tmp_path / "out"
    cfg = make_cfg(inp, out, "input.id_column=null", "sampler.steps=1",
                   "scoring.scorers=[geneval]", f"scoring.geneval_detector_id={bench_detector}",
                   "input.extra_columns=[tag,include,exclude]")
    run_in_process(cfg)
    assert committed_shards(open_location(str(out))) == {0, 1}
    metas = {}
    for tar in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            metas.update({m["prompt"]: m for m in (json.loads(tf.extractfile(x).read())
                                                   for x in tf.getmembers() if x.name.endswith(".json"))})
    assert set(metas) == set(wanted)
    for prompt, meta in metas.items():
        seen = meta["score_details"]["geneval"]
        assert meta["scores"]["geneval"] == wanted[prompt], seen["reason"]
        assert meta["extra"]["tag"] == seen["tag"] and seen["counts"] == {"bench": 8}
        assert seen["objects"]["bench"][0]["box"] == [0, 0, 32, 32]
    assert metas["a photo of three benchs"]["score_details"]["geneval"]["reason"] == "expected bench<4, found 8"
    assert metas["a photo of a dog right of a teddy bear"]["extra"]["include"][1]["position"] == ["right of", 0]


@needs_geneval
def test_the_benchmark_writes_genevals_table_for_two_methods(bench_detector, tmp_path):
    """`evaluate --benchmark geneval` on lines of GenEval's file (every task) with the tiny SDXL and the
    bench detector, 2 images per prompt, two methods: the six-task table, its intervals and GenEval's
    results files agree with the per-image verdicts."""
    import pyarrow.parquet as pq

    from pipeline.cli.evaluate import main as evaluate_main
    from pipeline.report import stats

    inp, wanted = real_lines(tmp_path / "g.jsonl", list(REAL), [EIGHT])
    tag = {json.loads(line)["prompt"]: json.loads(line)["tag"] for line in inp.read_text().splitlines()}
    out = tmp_path / "out"
    rc = evaluate_main(["--benchmark", "geneval", "--prompts", str(inp), "--methods", "cfg,dns",
                        "--images-per-prompt", "2", "--out", str(out), "sampler.steps=1", "sampler.height=32",
                        "sampler.width=32", "sampler.batch_size=4", f"scoring.geneval_detector_id={bench_detector}"])
    assert rc == 0
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == len(wanted) * 2 * 2 and {r["candidate"] for r in rows} == {0, 1}
    for r in rows:
        assert r["score_geneval"] == wanted[r["prompt"]], json.loads(r["score_details"])["geneval"]["reason"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_per_prompt"] == 2 and summary["scorers"] == ["geneval"]
    for m in ("cfg", "dns"):
        table = summary["geneval"][m]
        mine = [r for r in rows if r["method"] == m]
        assert set(table["tasks"]) == set(R.TASKS) and table["all_six_tasks"]
        for task, t in table["tasks"].items():
            verdicts = [r["score_geneval"] for r in mine if tag[r["prompt"]] == task]
            assert t["score"] == pytest.approx(sum(verdicts) / len(verdicts)) and t["images"] == len(verdicts)
            per_prompt = [np.mean([r["score_geneval"] for r in mine if r["prompt"] == p])
                          for p in dict.fromkeys(r["prompt"] for r in mine if tag[r["prompt"]] == task)]
            ci = stats.mean_ci(per_prompt)
            assert (t["ci_low"], t["ci_high"]) == (ci["ci_low"], ci["ci_high"])
        assert table["overall"] == pytest.approx(np.mean([t["score"] for t in table["tasks"].values()]))
        assert table["tasks"]["single_object"]["score"] == 0.5 and table["tasks"]["counting"]["score"] == 0.5
        ses = [t["se"] for t in table["tasks"].values()]
        assert table["overall_ci_low"] is None if None in ses else table["overall_ci_low"] < table["overall"]
        lines = [json.loads(x) for x in (out / "geneval" / f"{m}.jsonl").read_text().splitlines()]
        assert len(lines) == len(mine) and {x["tag"] for x in lines} == set(R.TASKS)
        assert sum(x["correct"] for x in lines) == sum(r["score_geneval"] for r in mine)
        assert all(json.loads(x["metadata"])["include"] for x in lines)  # as GenEval's own results have it
    md = (out / "summary.md").read_text()
    assert "## GenEval" in md and "| Stable Diffusion XL | 0.55 | 0.98 | 0.74 | 0.39 | 0.85 | 0.15 | 0.23 |" in md
    assert f"| `cfg` | {summary['geneval']['cfg']['overall']:.2f}" in md


# ================================================================== planning: the judge at full size
def test_the_bundled_detector_is_the_published_swin_s_mask2former():
    from pipeline.models import architectures as A

    model = A.meta_transformers("mask2former", A.BUNDLED[A.MASK2FORMER][""])
    count, tolerance = A.ROUNDED_PARAMS[(A.MASK2FORMER, "")]
    assert abs(A.params(model) - count) <= tolerance  # "69M" (Mask2Former, Table 1)
    assert model.config.num_labels == 80 and model.config.id2label[64] == "mouse"
    assert all(p.device.type == "meta" for p in model.parameters())


def test_the_plan_counts_the_judges_weights_flops_and_memory(tmp_path, tiny_cache):
    """--dry-run with scoring.scorers=[geneval] and the published detector: its float32 weights, the CLIP
    it shares with `clip`, its FLOPs per image at GenEval's 800-pixel input (a 64² image is resized to
    800²) and its activation peak in the sampler actor's memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.config import load_config
    from pipeline.driver.architecture import Architecture
    from pipeline.driver.dryrun import dry_run
    from pipeline.models import architectures as A

    inp = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a photo of a bench"] * 3, "tag": ["single_object"] * 3,
                             "include": ['[{"class": "bench", "count": 1}]'] * 3, "exclude": [None] * 3}), inp)
    args = [f"input.path={inp}", f"output.path={tmp_path / 'out'}", "sampler.height=64", "sampler.width=64",
            "sampler.steps=2", "scoring.scorers=[geneval]", f"scoring.geneval_detector_id={A.MASK2FORMER}",
            f"scoring.clip_id={A.CLIP_L}", "input.extra_columns=[tag,include,exclude]"]
    arch = Architecture(load_config(overrides=args))
    model = A.meta_transformers("mask2former", A.BUNDLED[A.MASK2FORMER][""])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(pixel_values=torch.empty(1, 3, 800, 800, device="meta"))
    assert arch.judge_flops == counter.get_total_flops() > 4e11
    assert arch.sources["geneval_detector"].endswith("bundled")
    plan = dry_run(load_config(overrides=args))
    m = plan["memory_gb"]
    assert m["sampler_weights"]["scorer_geneval_detector"] == round(A.params(model) * 4 / 1e9, 3)
    assert m["sampler_weights"]["scorer_clip"] == round(A.PUBLISHED_PARAMS[(A.CLIP_L, "")] * 4 / 1e9, 3)
    assert m["judge_activations"] > 0
    assert m["sampler_actor"] >= sum(m["sampler_weights"].values()) + m["judge_activations"] - 0.01
    per_image = sum(plan["unet_evals_per_image"].values()) * plan["unet_flops_per_eval"]
    assert plan["judge_flops_per_image"] == arch.judge_flops
    assert plan["total_flops"] == pytest.approx(plan["images"] * (per_image + plan["vae_flops_per_decode"]
                                                                  + arch.judge_flops), rel=1e-9)
    # as a gate rule: every try is decoded and judged, so the worst case counts the judge per try
    from pipeline.gate.rules import failed, parse_rules

    gated = load_config(overrides=args + ["gate.rules=[geneval >= 1]", "gate.tries=3"])
    rules = parse_rules(list(gated.gate.rules), list(gated.scoring.scorers))
    assert failed(rules, {"geneval": 0.0}) == failed(rules, {"geneval": None}) == ["geneval >= 1"]
    assert failed(rules, {"geneval": 1.0}) == []
    worst = dry_run(gated)["gate"]["worst_case"]
    assert worst["images"] == 3 * plan["images"]
    assert worst["total_flops"] == worst["evals"] * plan["unet_flops_per_eval"] + worst["images"] * (
        plan["vae_flops_per_decode"] + arch.judge_flops)


def test_the_detector_refuses_pickled_weights_and_remote_code(tmp_path, tiny_cache):
    """A detector directory holding a pickle instead of model.safetensors, whose config names code of its
    own: refused (safetensors only, no remote code), and nothing is unpickled or run."""
    import pickle
    import shutil

    from test_hostile import _Payload

    from pipeline.scoring.geneval import load_detector
    from pipeline.scoring.tiny import tiny_mask2former

    marker = tmp_path / "PWNED"
    hostile = tmp_path / "detector"
    shutil.copytree(tiny_mask2former(), hostile)
    (hostile / "model.safetensors").unlink()
    (hostile / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    config = json.loads((hostile / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
    (hostile / "config.json").write_text(json.dumps(config))
    (hostile / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(OSError, match=r"model\.safetensors"):
        load_detector(str(hostile), None, torch.device("cpu"))
    assert not marker.exists()

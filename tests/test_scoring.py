"""Scorers on their tiny models: formulas (known answers), batching, the shared CLIP-L forward,
the aesthetic head file, per-sample failures and deterministic tiny builds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import ScoringConfig
from pipeline.scoring.aesthetic import load_aesthetic_head, resolve_aesthetic_head
from pipeline.scoring.scorers import load_scorers

ALL = ["clip", "pickscore", "aesthetic"]
PROMPTS = ["a red fox in the snow", "a city at night", "a red fox in the snow", "A city at night", "x"]


def _images(n: int = 5, seed: int = 0) -> list:
    """Random RGB images of different sizes, as uint8 arrays and PIL images (both accepted)."""
    rng = np.random.default_rng(seed)
    out = [rng.integers(0, 256, (30 + 7 * i, 40 + 3 * i, 3), dtype=np.uint8) for i in range(n)]
    return [Image.fromarray(a) if i % 2 else a for i, a in enumerate(out)]


@pytest.fixture(scope="session")
def scorers(tiny_cache):
    return load_scorers(ScoringConfig(scorers=ALL), "cpu")


def _reference(model_dir, images, prompts):
    """Embeddings computed independently: CLIPProcessor + CLIPModel.get_*_features from the tiny dir."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(model_dir), use_safetensors=True).eval()
    proc = CLIPProcessor.from_pretrained(str(model_dir))
    with torch.no_grad():
        px = proc(images=[np.asarray(im) for im in images], return_tensors="pt")["pixel_values"]
        img = model.get_image_features(pixel_values=px)
        tok = proc(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        txt = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
    img = img if isinstance(img, torch.Tensor) else img.pooler_output
    txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    return img.double(), txt.double(), float(model.logit_scale.detach().exp())


def _split(results) -> tuple[list, list]:
    """[(scores, errors), ...] -> ([scores, ...], [errors, ...])."""
    return [r.scores for r in results], [errors for _, errors in results]


def _cos(a, b):
    return (torch.nn.functional.normalize(a, dim=-1) * torch.nn.functional.normalize(b, dim=-1)).sum(-1)


def test_scores_match_independent_formulas(scorers, tiny_cache):
    from safetensors.numpy import load_file

    from pipeline.scoring.tiny import tiny_aesthetic_head, tiny_clip, tiny_pickscore

    images = _images()
    results = scorers.score(images, PROMPTS)
    assert len(results) == 5
    scores, errors = _split(results)
    assert errors == [{}] * 5
    img, txt, clip_scale = _reference(tiny_clip(), images, PROMPTS)
    assert not math.isclose(clip_scale, 100.0)  # so `clip` using logit_scale would be caught
    expected_clip = 100.0 * _cos(img, txt)
    p_img, p_txt, p_scale = _reference(tiny_pickscore(), images, PROMPTS)
    assert not math.isclose(p_scale, 100.0)
    expected_pick = p_scale * _cos(p_img, p_txt)
    # aesthetic: the LAION MLP by hand (float64 numpy) on the L2-normalised CLIP image embedding
    w = {k: v.astype(np.float64) for k, v in load_file(str(tiny_aesthetic_head())).items()}
    x = torch.nn.functional.normalize(img, dim=-1).numpy()
    for i in (0, 2, 4, 6, 7):
        x = x @ w[f"layers.{i}.weight"].T + w[f"layers.{i}.bias"]
    for i, s in enumerate(scores):
        assert s["clip"] == pytest.approx(float(expected_clip[i]), abs=1e-4)
        assert s["pickscore"] == pytest.approx(float(expected_pick[i]), abs=1e-4)
        assert s["aesthetic"] == pytest.approx(float(x[i, 0]), abs=1e-4)
    assert len({round(s["clip"], 3) for s in scores}) == 5  # not a constant
    assert scores[0]["clip"] != pytest.approx(scores[0]["pickscore"], abs=1e-3)


def _set_direction(proj: torch.nn.Linear, pooled: torch.Tensor, direction: torch.Tensor) -> None:
    """Rank-1 projection: any input maps along `direction`; `pooled` maps exactly onto it."""
    proj.weight.copy_(torch.outer(direction, pooled) / pooled.dot(pooled))


def test_known_cosine_pair(tiny_cache, tmp_path):
    """Projections set so the image embedding is 3·e1 and the text embedding c·e1 + s·e2:
    cos = c exactly, so clip = 100c, pickscore = logit_scale.exp()·c, aesthetic = head(e1)."""
    from safetensors.torch import save_file

    head = {f"layers.{i}.{p}": torch.zeros(shape) for i, (o, n) in
            zip((0, 2, 4, 6, 7), ((1024, 32), (128, 1024), (64, 128), (16, 64), (1, 16)))
            for p, shape in (("weight", (o, n)), ("bias", (o,)))}
    for i in (0, 2, 4, 6):
        head[f"layers.{i}.weight"][0, 0] = 1.0
    head["layers.7.weight"][0, 0], head["layers.7.bias"][0] = 2.0, 5.0  # head(x) = 2·x[0] + 5
    save_file(head, str(tmp_path / "head.safetensors"))
    s = load_scorers(ScoringConfig(scorers=ALL, aesthetic_head=str(tmp_path / "head.safetensors")), "cpu")
    image, prompt = _images(1, seed=3)[0], "an apple on a table"
    cosines = {"clip": 0.6, "pickscore": -0.28}
    with torch.no_grad():
        for m, c in ((s.clip, cosines["clip"]), (s.pickscore, cosines["pickscore"])):
            dim = m.model.config.projection_dim
            px = m.image_processor(images=[Image.fromarray(image)], return_tensors="pt")["pixel_values"]
            tok = m.tokenizer([prompt], return_tensors="pt")
            pooled_v = m.model.vision_model(pixel_values=px).pooler_output[0]
            pooled_t = m.model.text_model(**tok).pooler_output[0]
            e1, e2 = torch.eye(dim)[0], torch.eye(dim)[1]
            _set_direction(m.model.visual_projection, pooled_v, 3.0 * e1)
            _set_direction(m.model.text_projection, pooled_t, c * e1 + math.sqrt(1 - c * c) * e2)
        s.pickscore.model.logit_scale.fill_(math.log(42.0))
    ((out, err),) = s.score([image], [prompt])
    assert err == {}
    assert out["clip"] == pytest.approx(100.0 * 0.6, abs=1e-4)
    assert out["pickscore"] == pytest.approx(42.0 * -0.28, abs=1e-4)
    assert out["aesthetic"] == pytest.approx(2.0 * 1.0 + 5.0, abs=1e-5)  # 11.0 if not normalised
    assert s.info["aesthetic"]["head"] == str(tmp_path / "head.safetensors")


def test_batching_invariance(scorers):
    images = _images()
    batched = _split(scorers.score(images, PROMPTS))[0]
    one_by_one = [scorers.score([im], [p])[0].scores for im, p in zip(images, PROMPTS)]
    scorers.batch_size = 2  # chunks of 2, 2, 1
    try:
        chunked = _split(scorers.score(images, PROMPTS))[0]
    finally:
        scorers.batch_size = 16
    for a, b, c in zip(batched, one_by_one, chunked):
        for name in ALL:
            assert a[name] == pytest.approx(b[name], abs=1e-4)
            assert a[name] == pytest.approx(c[name], abs=1e-4)


def _count(module, calls: list):
    return module.register_forward_hook(lambda mod, args, kwargs, out: calls.append(
        (kwargs.get("pixel_values", kwargs.get("input_ids")) if kwargs else args[0]).shape[0]),
        with_kwargs=True)


def test_one_clip_image_forward_per_batch_and_one_text_forward_per_unique_prompt(scorers):
    seen: dict[str, list] = {k: [] for k in ("clip_v", "clip_t", "pick_v", "pick_t")}
    hooks = [_count(scorers.clip.model.vision_model, seen["clip_v"]),
             _count(scorers.clip.model.text_model, seen["clip_t"]),
             _count(scorers.pickscore.model.vision_model, seen["pick_v"]),
             _count(scorers.pickscore.model.text_model, seen["pick_t"])]
    try:
        scores, _ = _split(scorers.score(_images(), PROMPTS))  # 4 unique prompts (case differs in one)
        assert seen == {"clip_v": [5], "clip_t": [4], "pick_v": [5], "pick_t": [4]}
        assert all(s["clip"] is not None and s["aesthetic"] is not None for s in scores)
        for v in seen.values():
            v.clear()
        scorers.batch_size = 2
        scorers.score(_images(), PROMPTS)
        assert seen["clip_v"] == [2, 2, 1] and seen["clip_t"] == [2, 2]
    finally:
        scorers.batch_size = 16
        for h in hooks:
            h.remove()


def test_failing_samples_get_none_and_error_the_others_are_scored(scorers):
    good = _images(3, seed=7)
    white = np.full((33, 33, 3), 255, np.uint8)
    bad_inputs = [Image.new("RGB", (0, 0)), Image.new("RGBA", (16, 16)), np.zeros((8, 8, 3), np.float32),
                  np.zeros((8, 8), np.uint8)]
    images = [good[0], bad_inputs[0], good[1], white, bad_inputs[1], bad_inputs[2], bad_inputs[3], good[2]]
    prompts = ["a", "b", "c", "d", "e", "f", "g", None]

    def boom(module, args, kwargs):  # the CLIP-L image forward fails on a constant image only
        px = kwargs.get("pixel_values", args[0] if args else None)
        if (px.flatten(2).std(-1).amax(-1) < 1e-6).any():
            raise RuntimeError("boom")

    expected = [scorers.score([im], [p])[0].scores for im, p in zip(good, ["a", "c", "x"])]
    hook = scorers.clip.model.vision_model.register_forward_pre_hook(boom, with_kwargs=True)
    try:
        scores, errors = _split(scorers.score(images, prompts))
    finally:
        hook.remove()
    for i in (1, 4, 5, 6):  # invalid inputs: every scorer None, each with the reason
        assert scores[i] == dict.fromkeys(ALL) and set(errors[i]) == set(ALL)
    assert "empty" in errors[1]["clip"] and "RGBA" in errors[4]["clip"]
    assert "uint8 [H, W, 3]" in errors[5]["pickscore"] and "uint8 [H, W, 3]" in errors[6]["aesthetic"]
    # the model failure: the batch is retried one by one; only the white image's CLIP-L scores fail
    assert scores[3]["clip"] is None and scores[3]["aesthetic"] is None
    assert errors[3] == {"clip": "RuntimeError: boom", "aesthetic": "RuntimeError: boom"}
    assert isinstance(scores[3]["pickscore"], float)
    # a prompt that is not a string: text scores fail, the image-only aesthetic score does not
    assert scores[7]["clip"] is None and scores[7]["pickscore"] is None and set(errors[7]) == {"clip",
                                                                                                "pickscore"}
    assert scores[7]["aesthetic"] == pytest.approx(expected[2]["aesthetic"], abs=1e-4)
    for i, e in ((0, expected[0]), (2, expected[1])):
        assert errors[i] == {}
        for name in ALL:
            assert scores[i][name] == pytest.approx(e[name], abs=1e-4)


def test_aesthetic_head_file_checks(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    with pytest.raises(ValueError, match="safetensors"):
        resolve_aesthetic_head("org/repo/sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(FileNotFoundError):
        resolve_aesthetic_head(str(tmp_path / "missing.safetensors"))
    calls = []
    monkeypatch.setattr("huggingface_hub.hf_hub_download",
                        lambda repo, filename, revision=None: calls.append((repo, filename, revision)) or
                        str(tmp_path / "x.safetensors"))
    resolve_aesthetic_head("ttj/sac-logos-ava1-l14-linearMSE/model.safetensors", "1e77fa0")
    assert calls == [("ttj/sac-logos-ava1-l14-linearMSE", "model.safetensors", "1e77fa0")]

    good = {f"layers.{i}.weight": torch.zeros(o, n) for i, (o, n) in
            zip((0, 2, 4, 6, 7), ((1024, 8), (128, 1024), (64, 128), (16, 64), (1, 16)))}
    good.update({k.replace("weight", "bias"): torch.zeros(v.shape[0]) for k, v in good.items()})
    save_file(good, str(tmp_path / "ok.safetensors"))
    assert load_aesthetic_head(tmp_path / "ok.safetensors", in_dim=8).layers[0].in_features == 8
    with pytest.raises(ValueError, match="8-d embeddings"):
        load_aesthetic_head(tmp_path / "ok.safetensors", in_dim=768)
    save_file({k.removeprefix("layers."): v for k, v in good.items()}, str(tmp_path / "keys.safetensors"))
    with pytest.raises(ValueError, match="keys"):
        load_aesthetic_head(tmp_path / "keys.safetensors")
    bad = dict(good, **{"layers.2.weight": torch.zeros(128, 1000)})
    save_file(bad, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match="size mismatch"):
        load_aesthetic_head(tmp_path / "shape.safetensors")


def test_info_records_ids_and_the_scored_image(scorers):
    info = json.loads(json.dumps(scorers.info))  # plain JSON for the sample/run metadata
    assert info["scorers"] == ALL and info["image"]["source"] == "decoded"
    assert info["clip"]["id"] == info["pickscore"]["id"] == info["aesthetic"]["head"] == "tiny"
    assert {"revision", "commit", "dtype", "value"} <= set(info["clip"])
    assert len(info["aesthetic"]["sha256"]) == 64 and info["aesthetic"]["embedding"]["id"] == "tiny"
    assert info["dtype"] == "float32" and info["device"] == "cpu"


def test_tiny_builds_are_deterministic(scorers, tmp_path):
    other = load_scorers(ScoringConfig(scorers=ALL), "cpu", cache_dir=str(tmp_path / "fresh"))
    assert (tmp_path / "fresh").is_dir()  # really built again, elsewhere
    images = _images(3, seed=11)
    assert other.score(images, PROMPTS[:3]) == scorers.score(images, PROMPTS[:3])
    assert other.info["aesthetic"]["sha256"] == scorers.info["aesthetic"]["sha256"]
    for a, b in ((other.clip.model, scorers.clip.model), (other.pickscore.model, scorers.pickscore.model)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_no_scorers_and_length_mismatch(tiny_cache):
    none = load_scorers(ScoringConfig(scorers=[]), "cpu")
    assert none.score(_images(2), ["a", "b"]) == [({}, {}), ({}, {})]
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        none.score(_images(2), ["a"])

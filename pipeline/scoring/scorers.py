"""Scorers behind one small interface: `load_scorers(cfg, device).score(images, prompts, extras)`.

    scorers = load_scorers(cfg.scoring, device)                    # models loaded once per worker
    for scores, errors in scorers.score(images, prompts, extras):  # one pair per sample, input order
        ...                                                        # {name: float | None}, {name: message}
    scorers.score(...)[i].details                                  # {name: what a judge saw}, JSON-able
    scorers.info                                           # ids, revisions, formulas, scored image

Scorers (the names are the keys of `scores`; values are raw, never clamped or rescaled):

- `clip`: CLIP ViT-L/14 (`openai/clip-vit-large-patch14`), `100 * cos(image_embeds, text_embeds)`
  (CLIPScore without its max(·, 0) clamp).
- `pickscore`: PickScore v1 (`yuvalkirstain/PickScore_v1`, processor from
  `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`), `logit_scale.exp() * cos(image_embeds, text_embeds)`,
  as in the PickScore reference code.
- `toy_judge`: for images of the toy world (`model.id=toy`), the compliance score of the programmatic
  judge (pipeline/toy/judge.py): 1 when every object, colour, shape, count and relation of the
  prompt is right; a prompt outside the world's grammar is a per-sample error.
- `aesthetic`: the LAION improved aesthetic predictor v2 (`sac+logos+ava1-l14-linearMSE`) MLP on
  the L2-normalised CLIP ViT-L/14 image embedding. It reuses the image embeddings of `clip`'s
  model: one CLIP-L image forward per batch serves both.
- `geneval`: GenEval's verdict (1.0 correct, 0.0 not) on the row's GenEval metadata (`tag`,
  `include`, `exclude` from `extras`, i.e. input.extra_columns), by a Mask2Former COCO instance
  detector (`scoring.geneval_detector_id`) and `clip`'s CLIP ViT-L/14 as the colour classifier
  (pipeline/scoring/geneval.py); what it saw (objects, boxes, scores, counts, colours) is the
  sample's `details["geneval"]`. A row without that metadata is a per-sample error.

Row data reaches every scorer the same way: `score(images, prompts, extras)`, `extras[i]` being the
sample's PromptRecord.extra (input.extra_columns; None or missing when the rows carry none).

Which image is scored: the decoded uint8 RGB [H, W, 3] image exactly as the sample stores it,
before encoding (identical pixels to the stored PNG; a jpg/webp file is a lossy encoding of it).
Scoring runs batched (`scoring.batch_size`) on the worker's device, in `scoring.dtype` on CUDA and
float32 on CPU; cosines and the aesthetic head are computed in float32. Text embeddings are
computed once per unique prompt of a call; prompts are truncated to the text model's 77 tokens.

Failures are per sample: an image that cannot be scored (wrong mode or dtype, empty, a model
error) gets `None` under each affected scorer and a message under the same name in `errors`; the
rest of the batch is scored. A failing batch is retried one sample at a time. Non-finite values
are reported as errors, never stored.

Everything loads through transformers `from_pretrained(..., use_safetensors=True)` with concrete
CLIP classes (never remote code); `id: tiny` first builds a tiny random model offline
(pipeline.scoring.tiny) and then loads it through the very same call.

The CLIP models: pipeline/scoring/clip.py; the aesthetic head and its file: pipeline/scoring/aesthetic.py;
GenEval's judge: pipeline/scoring/geneval.py (models) and pipeline/scoring/geneval_rules.py (rules).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from pipeline import faults
from pipeline.config import SCORERS, ScoringConfig
from pipeline.models.device import DTYPES, resolve_device
from pipeline.models.provenance import hub_commit_from_path
from pipeline.scoring.aesthetic import AestheticHead, load_aesthetic_head, resolve_aesthetic_head, sha256_file
from pipeline.scoring.clip import ClipScorerModel, load_clip_model
from pipeline.scoring.geneval import GenevalJudge, load_detector, request_of

log = logging.getLogger(__name__)

SCORED_IMAGE = {
    "source": "decoded",
    "format": "uint8 RGB [H, W, 3]",
    "note": "the decoded image as stored in the sample, before encoding (the stored PNG has the same "
            "pixels; jpg/webp files are lossy encodings of it)",
}
MAX_ERROR_CHARS = 500


class SampleScores(tuple):
    """One sample's result of `Scorers.score`: unpacks (and compares) as the pair `scores, errors`;
    `details` holds what a judge saw, {scorer: JSON-able} ({} for the plain scores)."""

    def __new__(cls, scores: dict[str, float | None], errors: dict[str, str], details: dict | None = None):
        self = super().__new__(cls, (scores, errors))
        self.details = details or {}
        return self

    def __getnewargs__(self):
        return self[0], self[1], self.details

    @property
    def scores(self) -> dict[str, float | None]:  # every enabled scorer, None where it failed
        return self[0]

    @property
    def errors(self) -> dict[str, str]:  # only the failed scorers, {} when all succeeded
        return self[1]


def _error(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}"
    return msg if len(msg) <= MAX_ERROR_CHARS else msg[:MAX_ERROR_CHARS - 3] + "..."


def to_rgb_image(image: Any):
    """A PIL RGB image from a PIL RGB image or a uint8 [H, W, 3] array/tensor; raises otherwise.

    No silent conversion: what is scored is exactly the stored RGB image.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise ValueError(f"image mode is {image.mode!r}; the scorers take RGB images")
        if image.width < 1 or image.height < 1:
            raise ValueError(f"image is empty ({image.width}x{image.height})")
        return image
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image array is {image.dtype} {list(image.shape)}; expected uint8 [H, W, 3]")
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"image is empty ({image.shape[1]}x{image.shape[0]})")
        return Image.fromarray(np.ascontiguousarray(image))  # uint8 HxWx3 -> RGB
    raise TypeError(f"image is a {type(image).__name__}; expected a PIL image or a uint8 [H, W, 3] array")


def _batched(fn, items: list, batch_size: int, what: str) -> tuple[list, list[str | None]]:
    """`fn(chunk) -> tensor [len(chunk), ...]` over chunks; a failing chunk is retried item by item."""
    out: list = [None] * len(items)
    errs: list[str | None] = [None] * len(items)
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        try:
            res = fn(chunk)
            for j in range(len(chunk)):
                out[start + j] = res[j]
            continue
        except Exception as e:
            if len(chunk) == 1:
                errs[start] = _error(e)
                continue
            log.warning("%s failed for a batch of %d (%s); retrying one by one", what, len(chunk), _error(e))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        for j, item in enumerate(chunk):
            try:
                out[start + j] = fn([item])[0]
            except Exception as e:
                errs[start + j] = _error(e)
    return out, errs


class Scorers:
    """The enabled scorers of one worker. Use `load_scorers`."""

    def __init__(self, names: list[str], clip: ClipScorerModel | None, pickscore: ClipScorerModel | None,
                 aesthetic: AestheticHead | None, batch_size: int, device: torch.device, info: dict,
                 geneval: GenevalJudge | None = None):
        self.names = list(names)
        self.clip, self.pickscore, self.aesthetic, self.geneval = clip, pickscore, aesthetic, geneval
        self.batch_size = batch_size
        self.device = device
        self.info = info

    @torch.inference_mode()
    def score(self, images: list, prompts: list[str], extras: list[dict | None] | None = None) -> list[SampleScores]:
        """Score `images[i]` against `prompts[i]` (and its row's `extras[i]`, for judges that read row
        data): one (scores, errors) per sample, in order, with `.details`.

        Per-sample failures become None + an error message; they never fail the call.
        """
        if len(images) != len(prompts) or (extras is not None and len(extras) != len(images)):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts"
                             + (f" and {len(extras)} extras" if extras is not None else ""))
        n = len(images)
        scores: list[dict[str, float | None]] = [dict.fromkeys(self.names) for _ in range(n)]
        errors: list[dict[str, str]] = [{} for _ in range(n)]
        details: list[dict[str, Any]] = [{} for _ in range(n)]
        if not self.names or not n:
            return [SampleScores(s, e) for s, e in zip(scores, errors)]

        def fail(i: int, names, msg: str) -> None:
            for name in names:
                if name in self.names and name not in errors[i]:
                    errors[i][name] = msg

        pil: list = [None] * n
        for i, image in enumerate(images):
            try:
                faults.hit("score", prompts[i] if isinstance(prompts[i], str) else "")
                pil[i] = to_rgb_image(image)
            except Exception as e:
                fail(i, self.names, _error(e))

        pixel_cache: dict[str, list] = {}
        for model, names in ((self.clip, ("clip", "aesthetic")), (self.pickscore, ("pickscore",))):
            if model is None:
                continue
            ok = [i for i in range(n) if pil[i] is not None]
            if model.pixel_key not in pixel_cache:
                pixels: list = [None] * n
                for i in ok:
                    try:
                        pixels[i] = model.pixels(pil[i])
                    except Exception as e:
                        pixels[i] = e
                pixel_cache[model.pixel_key] = pixels
            pixels = pixel_cache[model.pixel_key]
            for i in ok:
                if isinstance(pixels[i], Exception):
                    fail(i, names, _error(pixels[i]))
            ok = [i for i in ok if isinstance(pixels[i], torch.Tensor)]
            embeds, errs = _batched(model.image_embeds, [pixels[i] for i in ok], self.batch_size,
                                    f"{model.name} image embedding")
            for i, err in zip(ok, errs):
                if err:
                    fail(i, names, err)
            done = [(i, e) for i, e in zip(ok, embeds) if e is not None]
            if not done:
                continue
            if self.aesthetic is not None and model is self.clip:
                self._aesthetic(done, scores, errors)
            text_name = "clip" if model is self.clip else "pickscore"
            if text_name in self.names:
                self._text_scores(model, text_name, done, prompts, scores, errors)
        if "toy_judge" in self.names:
            self._toy_judge(prompts, pil, scores, errors)
        if self.geneval is not None:
            self._geneval(pil, extras or [None] * n, scores, errors, details)
        return [SampleScores(s, e, d) for s, e, d in zip(scores, errors, details)]

    def _geneval(self, pil, extras, scores, errors, details) -> None:
        """GenEval's verdicts: detection batched over images of one size, then the rules per image."""
        requests: dict[int, Any] = {}
        for i, image in enumerate(pil):
            if image is None:
                continue
            try:
                requests[i] = request_of(extras[i])
            except Exception as e:  # a row without (valid) GenEval metadata: this sample only
                errors[i]["geneval"] = _error(e)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i in requests:
            by_size.setdefault(pil[i].size, []).append(i)
        for group in by_size.values():
            found, errs = _batched(self.geneval.detector.detect, [pil[i] for i in group], self.batch_size,
                                   "geneval detection")
            for i, detections, err in zip(group, found, errs):
                try:
                    if err:
                        raise RuntimeError(err)
                    verdict, seen = self.geneval.judge(pil[i], requests[i], detections)
                except Exception as e:
                    errors[i]["geneval"] = err or _error(e)
                    continue
                scores[i]["geneval"] = 1.0 if verdict.correct else 0.0
                details[i]["geneval"] = seen

    @staticmethod
    def _toy_judge(prompts, pil, scores, errors) -> None:
        from pipeline.toy.judge import compliance

        for i, image in enumerate(pil):
            if image is None:
                continue
            try:
                scores[i]["toy_judge"] = float(compliance(prompts[i], image)["score"])
            except Exception as e:  # e.g. a prompt outside the toy world's grammar: this sample only
                errors[i]["toy_judge"] = _error(e)

    def _aesthetic(self, done, scores, errors) -> None:
        x = torch.stack([e for _, e in done]).float()
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # upstream: L2-normalise (0-norm kept)
        head = self.aesthetic
        values, errs = _batched(lambda xs: head(torch.stack(xs)).squeeze(-1), list(x), self.batch_size,
                                "aesthetic head")
        for (i, _), v, err in zip(done, values, errs):
            self._put(i, "aesthetic", v, err, scores, errors)

    def _text_scores(self, model: ClipScorerModel, name: str, done, prompts, scores, errors) -> None:
        unique = list(dict.fromkeys(prompts[i] if isinstance(prompts[i], str) else None for i, _ in done))
        text, terrs = _batched(model.text_embeds, unique, self.batch_size, f"{name} text embedding")
        by_prompt = {p: (t, err) for p, t, err in zip(unique, text, terrs)}
        scale = 100.0 if name == "clip" else float(model.model.logit_scale.detach().float().exp())
        for i, img in done:
            t, err = by_prompt[prompts[i] if isinstance(prompts[i], str) else None]
            if err or t is None:
                self._put(i, name, None, err or "prompt could not be embedded", scores, errors)
                continue
            cos = torch.dot(img, t) / (img.norm() * t.norm())
            self._put(i, name, scale * cos, None, scores, errors)

    @staticmethod
    def _put(i: int, name: str, value, err: str | None, scores, errors) -> None:
        if err is None:
            v = float(value)
            if math.isfinite(v):
                scores[i][name] = v
                return
            err = f"non-finite {name} score ({v})"
        scores[i][name] = None
        errors[i].setdefault(name, err)


def load_scorers(cfg: ScoringConfig, device: torch.device | str | None = None,
                 cache_dir: str | None = None) -> Scorers:
    """Load the scorers named in `cfg.scorers` once (tiny ones are built into `cache_dir` first)."""
    device = resolve_device(device)
    dtype = DTYPES[cfg.dtype] if device.type == "cuda" else torch.float32
    names = list(dict.fromkeys(cfg.scorers))
    unknown = [s for s in names if s not in SCORERS]
    if unknown:
        raise ValueError(f"unknown scorers {unknown}; choose from {', '.join(SCORERS)}")
    info: dict[str, Any] = {"scorers": names, "image": dict(SCORED_IMAGE), "device": str(device),
                            "dtype": str(dtype).removeprefix("torch."), "batch_size": cfg.batch_size}
    clip = pickscore = head = geneval = None
    if {"clip", "aesthetic", "geneval"} & set(names):
        clip = load_clip_model("clip", cfg.clip_id, cfg.clip_revision, cfg.clip_id, cfg.clip_revision,
                               device, dtype, cache_dir)
        info["text_max_tokens"] = clip.max_tokens
    if "clip" in names:
        info["clip"] = dict(clip.info, value="100 * cos(image_embeds, text_embeds), unclamped")
    if "pickscore" in names:
        pickscore = load_clip_model("pickscore", cfg.pickscore_id, cfg.pickscore_revision,
                                    cfg.pickscore_processor_id, cfg.pickscore_processor_revision,
                                    device, dtype, cache_dir)
        scale = float(pickscore.model.logit_scale.detach().float().exp())
        info["pickscore"] = dict(pickscore.info, logit_scale_exp=scale,
                                 value="logit_scale.exp() * cos(image_embeds, text_embeds)")
    if "toy_judge" in names:
        info["toy_judge"] = {"value": "compliance score of pipeline/toy/judge.py (1 = everything the prompt asks)"}
    if "aesthetic" in names:
        if cfg.aesthetic_head == "tiny":
            from pipeline.scoring.tiny import tiny_aesthetic_head

            path = tiny_aesthetic_head(cache_dir)
        else:
            path = resolve_aesthetic_head(cfg.aesthetic_head, cfg.aesthetic_head_revision)
        head = load_aesthetic_head(path, in_dim=clip.model.config.projection_dim).to(device)
        info["aesthetic"] = {
            "head": cfg.aesthetic_head, "revision": cfg.aesthetic_head_revision,
            "commit": hub_commit_from_path(path), "sha256": sha256_file(path),
            "embedding": dict(clip.info, of="clip's CLIP ViT-L/14 image forward (shared)"),
            "value": "LAION improved aesthetic predictor v2 MLP(l2-normalised CLIP image_embeds), float32"}
    if "geneval" in names:
        detector = load_detector(cfg.geneval_detector_id, cfg.geneval_detector_revision, device, cache_dir)
        geneval = GenevalJudge(detector, clip)
        info["geneval"] = {"detector": detector.info, "colors": dict(clip.info, of="clip's CLIP ViT-L/14 (shared)"),
                           "value": "GenEval's verdict: 1 correct, 0 not (evaluation/evaluate_images.py's rules)"}
    return Scorers(names, clip, pickscore, head, cfg.batch_size, device, info, geneval)

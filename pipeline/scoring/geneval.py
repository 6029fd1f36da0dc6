"""The GenEval judge on Hugging Face models: a Mask2Former instance detector and CLIP ViT-L/14 as
the colour classifier, feeding GenEval's rules (pipeline/scoring/geneval_rules.py, ported from
GenEval's `evaluation/evaluate_images.py`, github.com/djghosh13/geneval).

    judge = GenevalJudge(load_detector(...), clip)          # clip: the `clip` scorer's CLIP ViT-L/14
    verdict, seen = judge.judge(image, request)             # request: geneval_rules.parse_request(...)

Detector: `Mask2FormerForUniversalSegmentation` (`facebook/mask2former-swin-small-coco-instance`:
the Swin-S Mask2Former GenEval runs, here with the weights transformers publishes instead of
mmdetection's checkpoint), loaded with `from_pretrained(id, revision, safetensors only)` (never
remote code), in float32. Its input is resized as GenEval's mmdetection test pipeline resizes it
(shorter side 800, longer at most 1333), whatever size the checkpoint's own processor config names;
transformers' processor then rounds each side up to a multiple of 32 by resizing, where mmdetection
pads (square images, GenEval's, need neither; other shapes are stretched by under 4 %). Its output
goes through the image processor's own
`post_process_instance_segmentation` (top-100 (query, class) pairs, score = class probability x
mean mask probability, masks at the image's size) with binary maps per instance; each instance's box
is its mask's extent (x0, y0, x1 + 1, y1 + 1, as mmdetection's mask2bbox), and its class is GenEval's
name at the same COCO index (the checkpoint's label strings are never read).

Colour: for each object whose colour is asked, the image is composited onto GenEval's grey (#999)
through the object's mask and cropped to its box; CLIP's image embedding (normalised) is compared
with, per colour, the renormalised mean of the normalised text embeddings of GenEval's three
templates ("a photo of a {color} {object}", "... {color}-colored {object}", "... {color} object");
the argmax is the colour. The text side is computed once per class name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.scoring import geneval_rules as R

DETECTOR_SIZE = {"shortest_edge": 800, "longest_edge": 1333}  # GenEval's mmdetection test scale (1333, 800)
NUM_CLASSES = len(R.CLASSES)


@dataclass
class Detector:
    """A Mask2Former instance-segmentation model with its image processor (PIL backend)."""

    model: Any
    processor: Any
    device: torch.device
    info: dict

    def outputs(self, images: list) -> Any:
        """The model's raw outputs for equally sized PIL RGB images (one batch)."""
        batch = self.processor(images=images, size=DETECTOR_SIZE, return_tensors="pt")
        return self.model(pixel_values=batch["pixel_values"].to(self.device, torch.float32),
                          pixel_mask=batch["pixel_mask"].to(self.device))

    def detections(self, outputs: Any, sizes: list[tuple[int, int]]) -> list[list[R.Detection]]:
        """The detections of each image from the model's outputs (sizes: (height, width) per image),
        through the processor's instance post-processing; those at or below GenEval's lowest
        threshold are dropped here already."""
        results = self.processor.post_process_instance_segmentation(
            outputs, threshold=min(R.THRESHOLD, R.COUNTING_THRESHOLD), target_sizes=sizes, return_binary_maps=True)
        out = []
        for result in results:
            segments = result["segments_info"]
            masks = result["segmentation"] if segments else None  # [n, H, W] binary maps
            found = []
            for k, seg in enumerate(segments):
                mask = masks[k].bool().cpu().numpy()
                found.append(R.Detection(R.CLASSES[seg["label_id"]], float(seg["score"]), mask_box(mask), mask))
            out.append(found)
        return out

    @torch.inference_mode()
    def detect(self, images: list) -> list[list[R.Detection]]:
        return self.detections(self.outputs(images), [(im.height, im.width) for im in images])


def mask_box(mask: np.ndarray) -> R.Box:
    """A binary mask's extent as (x0, y0, x1, y1), x1 and y1 one past the last pixel (mmdetection's mask2bbox)."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if not len(cols):
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def on_grey(image, detection: R.Detection):
    """The object through its mask onto GenEval's grey, cropped to its box (the colour classifier's input)."""
    from PIL import Image

    background = Image.new("RGB", image.size, R.BACKGROUND)
    if detection.mask is not None:
        image = Image.composite(image, background, Image.fromarray(np.asarray(detection.mask, dtype=bool)))
    return image.crop(tuple(round(v) for v in detection.box))


class ColourClassifier:
    """CLIP zero-shot over GenEval's colours and templates (see the module docstring)."""

    def __init__(self, clip: Any):
        self.clip = clip
        self._weights: dict[str, torch.Tensor] = {}  # class name -> [colours, dim]

    def weights(self, name: str) -> torch.Tensor:
        if name not in self._weights:
            rows = []
            for color in R.COLORS:
                texts = [t.format(color=color, object=name) for t in R.COLOR_TEMPLATES]
                emb = torch.nn.functional.normalize(self.clip.text_embeds(texts), dim=-1).mean(0)
                rows.append(emb / emb.norm())
            self._weights[name] = torch.stack(rows)
        return self._weights[name]

    def __call__(self, image, name: str, detections: list[R.Detection]) -> list[str]:
        crops = [self.clip.pixels(on_grey(image, d)) for d in detections]
        emb = torch.nn.functional.normalize(self.clip.image_embeds(crops), dim=-1)
        return [R.COLORS[int(i)] for i in (emb @ self.weights(name).T).argmax(-1)]


class GenevalJudge:
    """GenEval's verdict on one image from detections (pipeline/scoring/geneval_rules.py)."""

    def __init__(self, detector: Detector, clip: Any):
        self.detector = detector
        self.colours = ColourClassifier(clip)

    @torch.inference_mode()
    def judge(self, image, request: R.Request, detections: list[R.Detection] | None = None
              ) -> tuple[R.Verdict, dict[str, Any]]:
        """(verdict, what it saw) for a PIL RGB image; `detections` when already detected."""
        if detections is None:
            detections = self.detector.detect([image])[0]
        objects = R.keep(detections, request.tag)
        colours: dict[int, str] = {}  # id(detection) -> colour, for the record

        def colour_of(name: str, found: list[R.Detection]) -> list[str]:
            seen = self.colours(image, name, found)
            colours.update({id(d): c for d, c in zip(found, seen)})
            return seen

        verdict = R.judge(objects, request, colour_of)
        seen = {"correct": verdict.correct, "reason": "\n".join(verdict.reasons), "tag": request.tag,
                "threshold": R.threshold_of(request.tag),
                "counts": {name: len(ds) for name, ds in objects.items()},
                "objects": {name: [_describe(d, colours.get(id(d))) for d in ds] for name, ds in objects.items()}}
        return verdict, seen


def _describe(d: R.Detection, colour: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"box": [round(v, 1) for v in d.box], "score": round(d.score, 4)}
    if colour is not None:
        out["color"] = colour
    return out


def load_detector(model_id: str, revision: str | None, device: torch.device,
                  cache_dir: str | None = None) -> Detector:
    """`Mask2FormerForUniversalSegmentation.from_pretrained(id, revision, safetensors only)` and its
    image processor (PIL backend); `tiny` builds a tiny random one offline first."""
    from transformers import Mask2FormerForUniversalSegmentation

    from pipeline.logs import quiet_libraries
    from pipeline.models.device import dtype_kwargs
    from pipeline.models.provenance import hub_commit

    quiet_libraries()
    path = model_id
    if model_id == "tiny":
        from pipeline.scoring.tiny import tiny_mask2former

        path = str(tiny_mask2former(cache_dir))
    model = Mask2FormerForUniversalSegmentation.from_pretrained(path, revision=revision, use_safetensors=True,
                                                                **dtype_kwargs("transformers", torch.float32))
    if model.config.num_labels != NUM_CLASSES:
        raise ValueError(f"scoring.geneval_detector_id={model_id!r} predicts {model.config.num_labels} classes; "
                         f"GenEval's rules need a COCO instance model ({NUM_CLASSES} classes in COCO's order), "
                         "e.g. facebook/mask2former-swin-small-coco-instance")
    processor = processor_class().from_pretrained(path, revision=revision)
    info = {"id": model_id, "revision": revision,
            "commit": hub_commit(path, "config.json", revision) if model_id != "tiny" else None,
            "dtype": "float32", "input_size": dict(DETECTOR_SIZE), "classes": "GenEval's, by COCO index"}
    return Detector(model.to(device).eval(), processor, device, info)


def processor_class():
    """The PIL Mask2Former image processor (the torchvision one needs torchvision, which is not a dependency)."""
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    return Mask2FormerImageProcessorPil


def request_of(extra: Any) -> R.Request:
    """The GenEval request of a row from its extra columns (PromptRecord.extra: tag, include, exclude)."""
    if not isinstance(extra, dict) or extra.get("tag") is None or extra.get("include") is None:
        have = sorted(extra) if isinstance(extra, dict) else []
        raise ValueError(f"geneval needs the row's GenEval metadata, tag and include (and exclude), through "
                         f"input.extra_columns=[tag,include,exclude]; the row has {have or 'none'}")
    return R.parse_request(extra["tag"], extra["include"], extra.get("exclude"))

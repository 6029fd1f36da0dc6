"""`jobs/render.py`: render one prompt with every method to PNGs, side by side, so a person can look.

    python jobs/render.py "a red fox in the snow" --out outputs/render [dotted.key=value ...]

Uses configs/default.yaml (tiny model) unless --config/overrides say otherwise, e.g.
`--config configs/sdxl.yaml` on a GPU. Writes <out>/<method>.png and <out>/all.png.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pipeline.config import load_config
from pipeline.sampling.methods import METHODS


def main(argv: list[str] | None = None, prog: str = "jobs/render.py") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt")
    ap.add_argument("--out", default="outputs/render")
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("--negative", default="blurry, low quality", help="negative prompt for np")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=None, help="comma-separated (default: every method; with "
                    "sampler.attend_excite.enabled=true, every method A&E can alter)")
    ap.add_argument("--subjects", default=None, help="Attend-and-Excite's subject words, comma-separated")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_intermixed_args(argv)  # the prompt, options and overrides in any order
    cfg = load_config(a.config, a.overrides)

    from PIL import Image, ImageDraw

    from pipeline.models.captioner import Captioner
    from pipeline.models.diffusion import load_model
    from pipeline.sampling.batch import SampleRequest, generate_batch

    model = load_model(cfg.model)
    captioner = None
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tiles = []
    methods = a.methods.split(",") if a.methods else [
        m for m in METHODS if not cfg.sampler.attend_excite.enabled or METHODS[m].attend_excite(cfg.sampler)]
    subjects = [w.strip() for w in a.subjects.split(",")] if a.subjects else None
    for method in methods:
        s = dataclasses.replace(cfg.sampler, method=method, batch_size=1)
        if METHODS[method].needs_captioner(s) and captioner is None:
            captioner = Captioner(cfg.captioner, model.device)
        req = SampleRequest(a.prompt, a.seed, a.negative if method == "np" else None, subjects)
        (g,), t = generate_batch(model, [req], s, captioner)
        img = Image.fromarray(g.image.numpy())
        img.save(out / f"{method}.png")
        neg = g.metadata.get("negative_prompt") or ""
        print(f"{method:7s} evals={g.metadata['unet_evals']:5d}  {t.sample_s + t.decode_s + t.caption_s:6.2f}s"
              f"  negative={neg[:60]!r}  -> {out / f'{method}.png'}")
        tiles.append((method, img))
    size = max(128, cfg.sampler.width)
    sheet = Image.new("RGB", (size * len(tiles), size + 20), "white")
    for i, (name, img) in enumerate(tiles):
        sheet.paste(img.resize((size, size)), (i * size, 20))
        ImageDraw.Draw(sheet).text((i * size + 4, 4), name, fill="black")
    sheet.save(out / "all.png")
    print(f"side by side: {out / 'all.png'}")
    return 0

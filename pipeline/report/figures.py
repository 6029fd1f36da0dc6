"""Figures drawn with matplotlib: the card's score histograms (`histogram`) and contact sheet
(`contact_sheet`), and the evaluation's prompt x method grids (`draw_grid`). Each returns a PIL image;
`png_bytes` encodes one.

Why matplotlib: axes, ticks, legends, text layout and image resampling come from a library people
know, and restyling is the usual rcParams or `matplotlib.style.context(...)` around the call (every
rcParam but those in `RC`), not editing pixel offsets. Only the object-oriented API is used (a `Figure`
drawn on its own Agg canvas): no pyplot, so no figure registry to leak into, no GUI backend and no
backend switch.

Deterministic output: pixel sizes are fixed (at DPI = 72 a point is a pixel, so font sizes and the
layout share one unit, and w / 72 * 72 never truncates to w - 1 in Agg); `RC` pins the font to
matplotlib's bundled DejaVu Sans and turns off TeX and mathtext (a prompt with two "$" would be
typeset); the PNG is written by PIL, which adds no software, version or date chunks.
"""

from __future__ import annotations

import io
import math
import textwrap
import warnings
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation
from PIL import Image

# One colour per method (matplotlib's tab10 cycle), in order of first appearance.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
GREY, LIGHT, RED, GREEN = "#6e6e6e", "#e1e1e1", "#c80000", "#008200"
DPI = 72  # see the module docstring
# Applied around each drawing (mpl.rc_context restores the caller's rcParams afterwards); every
# other rcParam follows the caller's style.
RC = {"font.family": "DejaVu Sans", "font.size": 13, "text.usetex": False, "text.parse_math": False}
NBSP = "\u00a0"  # textwrap breaks only at ASCII whitespace: "clip 0.31" with a NBSP stays on one line


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _figure(width: int, height: int) -> Figure:
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI)


def _image(fig: Figure) -> Image.Image:
    canvas = FigureCanvasAgg(fig)
    with warnings.catch_warnings():  # a prompt's emoji or CJK glyph that DejaVu lacks is drawn as a box
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")


def _wrap(text: Any, width_px: float, size: float, max_lines: int, **kw: Any) -> str:
    """`text` wrapped to about `width_px` at font `size` (DejaVu Sans averages ~0.5 em a character;
    0.55 leaves room for wider words); ' …' when cut short."""
    chars = max(8, int(width_px / (0.55 * size)))
    return "\n".join(textwrap.wrap(str(text or ""), chars, max_lines=max_lines, placeholder=" …", **kw))


def _items(parts: list[str], width_px: float, max_lines: int) -> str:
    """Items such as "clip 0.31" (at 12 px) joined into lines, never splitting one."""
    return _wrap("   ".join(p.replace(" ", NBSP) for p in parts), width_px, 12, max_lines, break_long_words=False)


def _under(ax: Axes, anchor: Artist, text: str, at: tuple[float, float] = (0, 0), dx: float = 0, gap: float = 4,
           **kw: Any) -> Annotation:
    """`text` hung by its top-left corner `gap` pixels under point `at` of `anchor` (an axes or another
    text, as a fraction of its box): a caption of any number of lines pushes the next one down."""
    return ax.annotate(text, at, xycoords=anchor, xytext=(dx, -gap), textcoords="offset pixels", va="top", **kw)


def _mosaic(nrows: int, ncols: int, tile: int, left: int, top: int, gap_x: int, gap_y: int, right: int,
            bottom: int) -> tuple[Figure, np.ndarray]:
    """A figure of nrows x ncols axes of exactly tile x tile pixels, with the margins and gaps (pixels)
    that hold the text around them."""
    w = left + ncols * tile + (ncols - 1) * gap_x + right
    h = top + nrows * tile + (nrows - 1) * gap_y + bottom
    fig = _figure(w, h)
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=dict(
        left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h, wspace=gap_x / tile,
        hspace=gap_y / tile))
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
        ax.set_visible(False)  # until a tile is drawn in it
    return fig, axes


def _tile(ax: Axes, img: Image.Image | None, frame: str, error: str = "", tile: int = 0) -> None:
    """The image (or `error` in red) in a frame of the method's colour, resized to `tile` pixels by
    PIL first: nearest-neighbour when enlarging (tiny previews keep their pixels), Lanczos when
    shrinking; then drawn one image pixel per figure pixel."""
    ax.set_visible(True)
    if img is None:
        ax.text(0.5, 0.5, error, transform=ax.transAxes, ha="center", va="center", color=RED)
        frame = RED
    else:
        if tile and img.size != (tile, tile):  # fit, keeping the aspect ratio, centred on white
            scale = tile / max(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
            fitted = img.convert("RGB").resize(size, resample)
            img = Image.new("RGB", (tile, tile), "white")
            img.paste(fitted, ((tile - size[0]) // 2, (tile - size[1]) // 2))
        ax.imshow(np.asarray(img.convert("RGB")), interpolation="none")
    ax.spines[:].set(color=frame, linewidth=3)


def histogram(series: dict[str, tuple[Any, int, float | None]], edges: Any, title: str, xlabel: str,
              colours: dict[str, str], width_px: int = 820, plot_h: int = 330) -> Image.Image:
    """Overlaid histograms on shared bins (`edges`) of several series, given as (count per bin, n,
    mean): one colour each, a dashed line at each mean, and a legend with each series' n and mean above
    the plot (so it never hides a bar)."""
    with mpl.rc_context(RC):
        ncols = min(3, len(series)) or 1
        fig = _figure(width_px, plot_h + 130 + 22 * math.ceil(len(series) / ncols))  # 22 px a legend row
        fig.set_layout_engine("constrained")  # room for title, legend and labels; the figure size stays
        fig.suptitle(title, fontsize=17, fontweight="bold")
        ax = fig.add_subplot()
        edges = np.asarray(edges, np.float64)
        for name, (counts, n, mean) in series.items():
            c = colours[name]
            label = f"{name}  n={n}" + (f", mean {mean:.4g}" if n else "")
            ax.hist(edges[:-1], edges, weights=np.asarray(counts, np.float64), histtype="stepfilled",
                    facecolor=(c, 0.25), edgecolor=c, linewidth=2, label=label)
            if n:
                ax.axvline(mean, color=c, linestyle="--", linewidth=2)
        ax.set(xlabel=f"{xlabel}   (dashed: mean)", ylabel="images per bin")
        ax.yaxis.get_major_locator().set_params(integer=True)  # counts
        if not any(n for _, n, _ in series.values()):
            ax.text(0.5, 0.5, "no scores recorded", transform=ax.transAxes, ha="center", va="center", color=GREY)
            ax.set(xticks=[], yticks=[], ylim=(0, 1))
        if series:  # above the plot, inside the layout (constrained layout counts an axes' legend)
            ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.01), ncols=ncols, frameon=False, borderaxespad=0)
        ax.grid(axis="y", color=LIGHT)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
        return _image(fig)


def contact_sheet(data: Any, colours: dict[str, str], tile: int = 200, title: str = "") -> Image.Image | None:
    """Rows = methods (name, images, UNet evals per image), columns = the first samples of each, framed
    in the method's colour, with a chosen/rejected badge in a preference group; prompt (wrapped) and
    scores under each."""
    rows = [m for m in data.methods if data.tiles.get(m)]
    if not rows:
        return None
    with mpl.rc_context(RC):
        cols = max(len(data.tiles[m]) for m in rows)
        pad, label_w, caption_h = 12, 140, 86  # caption: 3 prompt lines at 13 px, 2 score lines at 12 px
        heading = _wrap(title, label_w + cols * (tile + pad) - pad, 17, 3)  # long output paths wrap
        fig, axes = _mosaic(len(rows), cols, tile, left=pad + label_w, top=24 + 21 * len(heading.splitlines()),
                            gap_x=pad, gap_y=caption_h + pad, right=pad, bottom=caption_h + pad)
        fig.text(pad / fig.bbox.width, 1 - 10 / fig.bbox.height, heading, va="top", fontsize=17, fontweight="bold")
        for r, m in enumerate(rows):
            for ax, t in zip(axes[r], data.tiles[m]):
                try:
                    img, error = decode(t.image), ""
                except Exception as e:  # an unreadable image is shown as such, not hidden
                    img, error = None, f"unreadable\n{type(e).__name__}"
                _tile(ax, img, colours.get(m, GREY), error, tile)
                if t.note:
                    ax.text(0.03, 0.97, t.note, transform=ax.transAxes, va="top", color="white", fontsize=12,
                            bbox=dict(facecolor=GREEN if t.note == "chosen" else RED, edgecolor="none", pad=2))
                prompt = _under(ax, ax, _wrap(t.prompt, tile, 13, 3))
                scores = [f"{k} {v:.2f}" if isinstance(v, (int, float)) else f"{k} n/a"
                          for k, v in ((k, t.scores[k]) for k in data.scorers if k in t.scores)]
                _under(ax, prompt, _items(scores, tile, 2), gap=2, color=GREY, fontsize=12)
            ax = axes[r, 0]
            name = _under(ax, ax, m, at=(0, 1), dx=-label_w, gap=0, fontsize=16, fontweight="bold")
            n = data.images[m]
            _under(ax, name, f"{n} images" + (f"\n{data.evals[m] / n:.0f} UNet evals" if n else ""),
                   color=GREY, fontsize=12)
        return _image(fig)


def draw_grid(prompts: list[Any], methods: list[str], images: dict, rows: list[dict[str, Any]],
              scorers: list[str], tile: int = 256) -> Image.Image:
    """Rows = prompts (id and wrapped text on the left), columns = methods (name, UNet evals per image,
    framed in the method's colour); scores under each image ("failed" where there is none)."""
    with mpl.rc_context(RC):
        pad, text_w, head_h = 10, 230, 64
        score_lines = max(1, len(_items([f"{s} -00.000" for s in scorers], tile, 99).splitlines()))
        score_h = round(score_lines * 12 * 1.2) + 8
        fig, axes = _mosaic(len(prompts), len(methods), tile, left=pad + text_w, top=head_h, gap_x=pad,
                            gap_y=score_h + pad, right=pad, bottom=score_h + pad)
        by = {(r["prompt_id"], r["method"]): r for r in rows}
        for i, p in enumerate(prompts):
            for j, m in enumerate(methods):
                ax = axes[i, j]
                _tile(ax, images.get((p.prompt_id, m)), PALETTE[j % len(PALETTE)], "failed", tile)
                r = by.get((p.prompt_id, m), {})
                parts = [f"{s} {r[f'score_{s}']:.3f}" if r.get(f"score_{s}") is not None else f"{s} n/a"
                         for s in scorers]
                _under(ax, ax, _items(parts, tile, score_lines), color=GREY, fontsize=12)
            ax = axes[i, 0]
            pid = _under(ax, ax, f"#{p.prompt_id}", at=(0, 1), dx=-text_w, gap=0, color=GREY, fontsize=12)
            lines = max(1, int((tile + score_h) / (13 * 1.2)) - 1)  # as many as fit beside the row (1.2: line spacing)
            _under(ax, pid, _wrap(p.prompt, text_w - 14, 13, lines), gap=2)
        for j, m in enumerate(methods):
            ev = sorted({r["unet_evals"] for r in rows if r["method"] == m})
            axes[0, j].set_title(m, loc="left", fontsize=16, fontweight="bold", pad=22)
            if ev:
                axes[0, j].annotate(f"{'/'.join(map(str, ev))} UNet evals", (0, 1), xycoords="axes fraction",
                                    xytext=(0, 5), textcoords="offset pixels", color=GREY, fontsize=12)
        return _image(fig)

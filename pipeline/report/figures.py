"""Figures drawn with PIL: histograms, the card's contact sheet, the evaluation's grids, and the
small drawing kit they share (fonts, wrapped text, ticks)."""

from __future__ import annotations

import io
import math
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

# One colour per method (the Tableau 10 palette), in order of first appearance.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
INK, GREY, LIGHT = (20, 20, 20), (110, 110, 110), (225, 225, 225)


@lru_cache(maxsize=16)
def font(size: int = 14, bold: bool = False) -> Any:
    for name in (("DejaVuSans-Bold.ttf",) if bold else ()) + ("DejaVuSans.ttf",):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def text_width(f: Any, text: str) -> float:
    return f.getlength(text)


def line_height(f: Any) -> int:
    top, bottom = f.getbbox("Ayg|")[1::2]
    return int(bottom - top) + 4


def wrap(text: str, f: Any, width: int, max_lines: int = 3) -> list[str]:
    """Greedy word wrap to `width` pixels; words longer than a line are cut; '…' when cut short."""
    words = " ".join(str(text).split()).split(" ") if str(text).strip() else [""]
    lines: list[str] = []
    cur = ""
    for w in words:
        while text_width(f, w) > width and len(w) > 1:  # a single over-long word: hard split
            cut = len(w)
            while cut > 1 and text_width(f, w[:cut]) > width:
                cut -= 1
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(w[:cut])
            w = w[cut:]
        trial = f"{cur} {w}" if cur else w
        if text_width(f, trial) <= width:
            cur = trial
        else:
            lines.append(cur)
            cur = w
    lines.append(cur)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and text_width(f, last + "…") > width:
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last.rstrip() + "…"]
    return lines


def pack(items: list[str], f: Any, width: int, sep: str = "   ") -> list[str]:
    """Items (e.g. "clip 21.3") joined into lines of at most `width` pixels, never splitting an item."""
    lines: list[str] = []
    for item in items:
        if lines and text_width(f, lines[-1] + sep + item) <= width:
            lines[-1] += sep + item
        else:
            lines.append(item)
    return lines


def draw_lines(d: ImageDraw.ImageDraw, xy: tuple[float, float], lines: list[str], f: Any,
               fill: Any = INK, center_width: int | None = None) -> float:
    """Draw lines from the top-left `xy` (centred in `center_width` if given); returns the bottom y."""
    x, y = xy
    lh = line_height(f)
    for line in lines:
        dx = (center_width - text_width(f, line)) / 2 if center_width else 0
        d.text((x + dx, y), line, fill=fill, font=f)
        y += lh
    return y


def fit(img: Image.Image, size: int) -> Image.Image:
    """Scale to fit a size x size square: crisp pixels when enlarging a small image 2x or more."""
    img = img.convert("RGB")
    scale = size / max(img.width, img.height)
    new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    resample = Image.NEAREST if scale >= 2 else (Image.BICUBIC if scale > 1 else Image.LANCZOS)
    return img.resize(new, resample)


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def rgba(hex_colour: str, alpha: int = 255) -> tuple[int, int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), alpha


def nice_ticks(lo: float, hi: float, target: int = 6) -> tuple[list[float], int]:
    """Round tick values covering [lo, hi] (steps 1, 2, 2.5, 5 x 10^k) and the decimals to print."""
    span = hi - lo if hi > lo else (abs(lo) or 1.0)
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw * (1 - 1e-9))
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t = start + len(ticks) * step
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if round(step / mag, 6) == 2.5 else 0)
    return ticks, decimals


def vertical_text(text: str, f: Any, fill: Any = INK) -> Image.Image:
    """`text` rotated 90° counter-clockwise on a transparent background (for a y-axis label)."""
    w, h = int(text_width(f, text)) + 4, line_height(f) + 2
    im = Image.new("RGBA", (w, h), (255, 255, 255, 0))
    ImageDraw.Draw(im).text((2, 0), text, fill=fill, font=f)
    return im.rotate(90, expand=True)


def histogram(series: dict[str, list[float]], title: str, xlabel: str, colours: dict[str, str],
              width_px: int = 820, plot_h: int = 330) -> Image.Image:
    """Overlaid histograms (shared bins) of several series, one colour each; axes, mean lines and a
    legend (above the plot, so it never hides a bar)."""
    f_title, f, f_small = font(18, bold=True), font(14), font(12)
    left, right, bottom = 78, 24, 64
    values = [v for vs in series.values() for v in vs]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    xticks, dec = nice_ticks(lo, hi, 7)
    # legend entries laid out left to right under the title, wrapping
    entries = [(name, f"{name}  n={len(vs)}" + (f", mean {sum(vs) / len(vs):.{dec + 2}f}" if vs else ""))
               for name, vs in series.items()]
    lh = line_height(f) + 6
    places, lx, ly = [], left, 0
    for name, e in entries:
        w = int(text_width(f, e)) + 40
        if lx + w > width_px - right and lx > left:
            lx, ly = left, ly + lh
        places.append((name, e, lx, ly))
        lx += w + 12
    top = 46 + (ly + lh if entries else 0) + 8
    W, H = width_px, top + plot_h + bottom
    img = Image.new("RGBA", (W, H), (255, 255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((left, 12), title, fill=INK, font=f_title)
    for name, e, x, y in places:
        yy = 44 + y
        d.rectangle((x, yy + 3, x + 24, yy + lh - 7), fill=rgba(colours[name], 140), outline=rgba(colours[name]))
        d.text((x + 32, yy), e, fill=INK, font=f)
    x0, x1, y0, y1 = left, W - right, top, top + plot_h  # plot box
    if not values:
        d.rectangle((x0, y0, x1, y1), outline=GREY)
        d.text((x0 + 20, (y0 + y1) / 2), "no scores recorded", fill=GREY, font=f)
        return img.convert("RGB")
    n_max = max(len(v) for v in series.values())
    bins = int(min(40, max(8, round(2 * n_max ** (1 / 3)))))
    width = (hi - lo) / bins
    counts = {}
    for name, vs in series.items():
        c = [0] * bins
        for v in vs:
            c[min(bins - 1, max(0, int((v - lo) / width)))] += 1
        counts[name] = c
    cmax = max(max(c) for c in counts.values()) or 1
    yticks, _ = nice_ticks(0, cmax, 5)
    ytop = max(cmax, yticks[-1])

    def px(v: float) -> float:
        return x0 + (v - lo) / (hi - lo) * (x1 - x0)

    def py(c: float) -> float:
        return y1 - c / ytop * (y1 - y0)

    for t in yticks:  # grid + y ticks
        y = py(t)
        d.line((x0, y, x1, y), fill=LIGHT)
        label = f"{t:g}"
        d.text((x0 - 8 - text_width(f_small, label), y - 8), label, fill=INK, font=f_small)
    for t in xticks:
        x = px(t)
        d.line((x, y1, x, y1 + 5), fill=INK)
        label = f"{t:.{dec}f}"
        d.text((x - text_width(f_small, label) / 2, y1 + 8), label, fill=INK, font=f_small)
    for name, c in counts.items():  # translucent bars, then a solid outline per series
        layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
        ld = ImageDraw.Draw(layer)
        for i, n in enumerate(c):
            if n:
                ld.rectangle((px(lo + i * width), py(n), px(lo + (i + 1) * width), y1),
                             fill=rgba(colours[name], 90), outline=rgba(colours[name], 255))
        img = Image.alpha_composite(img, layer)
    d = ImageDraw.Draw(img)
    for name, vs in series.items():  # dashed line at each series' mean
        if vs:
            x = px(sum(vs) / len(vs))
            for yy in range(int(y0), int(y1), 10):
                d.line((x, yy, x, min(yy + 5, y1)), fill=rgba(colours[name]), width=2)
    d.line((x0, y0, x0, y1), fill=INK)
    d.line((x0, y1, x1, y1), fill=INK)
    d.text(((x0 + x1 - text_width(f, xlabel)) / 2, H - 30), xlabel + "   (dashed: mean)", fill=INK, font=f)
    ylab = vertical_text("images per bin", f)
    img.alpha_composite(ylab, (8, int((y0 + y1 - ylab.height) / 2)))
    return img.convert("RGB")




def contact_sheet(data: Any, colours: dict[str, str], tile: int = 200, title: str = "") -> Image.Image | None:
    """Rows = methods, columns = the first samples of each; prompt (wrapped) and scores under each."""
    rows = [m for m in data.methods if data.tiles.get(m)]
    if not rows:
        return None
    f_title, f_head, f, f_small = font(20, bold=True), font(16, bold=True), font(13), font(12)
    cols = max(len(data.tiles[m]) for m in rows)
    pad, label_w = 12, 130
    caption_h = 3 * line_height(f) + 2 * line_height(f_small) + 8
    scorers = data.scorers
    cell_w, cell_h = tile + pad, tile + caption_h + pad
    W = pad + label_w + cols * cell_w + pad
    title_lines = wrap(title, f_title, W - 2 * pad, max_lines=3)  # long output paths wrap, not clip
    title_h = 20 + len(title_lines) * line_height(f_title)
    H = title_h + len(rows) * cell_h + pad
    sheet = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(sheet)
    draw_lines(d, (pad, 12), title_lines, f_title, fill=INK)
    for r, m in enumerate(rows):
        y = title_h + r * cell_h
        d.rectangle((pad, y, pad + 6, y + tile), fill=colours.get(m, INK))
        d.text((pad + 14, y + 4), m, fill=INK, font=f_head)
        d.text((pad + 14, y + 28), f"{data.images[m]} images", fill=GREY, font=f_small)
        if data.images[m]:
            d.text((pad + 14, y + 46), f"{data.evals[m] / data.images[m]:.0f} UNet evals", fill=GREY, font=f_small)
        for j, t in enumerate(data.tiles[m]):
            x = pad + label_w + j * cell_w
            d.rectangle((x - 1, y - 1, x + tile, y + tile), outline=LIGHT)
            try:
                im = fit(decode(t.image), tile)
                sheet.paste(im, (x + (tile - im.width) // 2, y + (tile - im.height) // 2))
            except Exception as e:  # an unreadable image is shown as such, not hidden
                d.text((x + 8, y + tile / 2), f"unreadable: {type(e).__name__}", fill=(200, 0, 0), font=f_small)
            if t.note:
                colour = (0, 130, 0) if t.note == "chosen" else (190, 0, 0)
                w = text_width(f_small, t.note) + 10
                d.rectangle((x + 4, y + 4, x + 4 + w, y + 22), fill=colour)
                d.text((x + 9, y + 6), t.note, fill="white", font=f_small)
            yy = draw_lines(d, (x, y + tile + 4), wrap(t.prompt, f, tile, 3), f)
            items = [f"{k} {t.scores[k]:.2f}" if isinstance(t.scores[k], (int, float)) else f"{k} n/a"
                     for k in scorers if k in t.scores]
            draw_lines(d, (x, yy), pack(items, f_small, tile)[:2], f_small, fill=GREY)
    return sheet


def draw_grid(prompts: list[Any], methods: list[str], images: dict, rows: list[dict[str, Any]],
              scorers: list[str], tile: int = 256) -> Any:
    """Rows = prompts (id + wrapped text on the left), columns = methods; scores under each image."""
    f_head, f, f_small = font(16, bold=True), font(13), font(12)
    pad, text_w, head_h = 10, 230, 64
    score_lines = max(1, len(pack([f"{s} -00.000" for s in scorers], f_small, tile)))
    score_h = line_height(f_small) * score_lines + 6
    cell_w, cell_h = tile + pad, tile + score_h + pad
    W = pad + text_w + len(methods) * cell_w + pad
    H = head_h + len(prompts) * cell_h + pad
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    by = {(r["prompt_id"], r["method"]): r for r in rows}
    for j, m in enumerate(methods):
        x = pad + text_w + j * cell_w
        d.rectangle((x, 8, x + tile, 13), fill=PALETTE[j % len(PALETTE)])
        d.text((x, 16), m, fill=INK, font=f_head)
        ev = sorted({r["unet_evals"] for r in rows if r["method"] == m})
        if ev:
            draw_lines(d, (x, 36), wrap(f"{'/'.join(map(str, ev))} UNet evals", f_small, tile, 1), f_small, fill=GREY)
    for i, p in enumerate(prompts):
        y = head_h + i * cell_h
        d.line((pad, y - pad / 2, W - pad, y - pad / 2), fill=LIGHT)
        yy = draw_lines(d, (pad, y), [f"#{p.prompt_id}"], f_small, fill=GREY)
        draw_lines(d, (pad, yy), wrap(p.prompt, f, text_w - 14, max(1, (tile + score_h) // line_height(f) - 1)), f)
        for j, m in enumerate(methods):
            x = pad + text_w + j * cell_w
            im = images.get((p.prompt_id, m))
            if im is None:
                d.rectangle((x, y, x + tile, y + tile), outline=(200, 0, 0))
                d.text((x + 8, y + tile / 2), "failed", fill=(200, 0, 0), font=f)
            else:
                im = fit(im, tile)
                img.paste(im, (x + (tile - im.width) // 2, y + (tile - im.height) // 2))
            r = by.get((p.prompt_id, m), {})
            parts = [f"{s} {r[f'score_{s}']:.3f}" if r.get(f"score_{s}") is not None else f"{s} n/a"
                     for s in scorers]
            draw_lines(d, (x, y + tile + 3), pack(parts, f_small, tile)[:score_lines], f_small, fill=GREY)
    return img

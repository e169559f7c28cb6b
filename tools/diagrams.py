"""Draw the book's four diagrams as SVG files: `python tools/diagrams.py [OUT_DIR]` (default book/figures).

The SVG is written as plain text, so the output is byte-for-byte reproducible, and every number in it
is read from `perceiver_edu.config` when the files are generated: change a preset and `make diagrams`
redraws the figures (tests/test_diagrams.py fails until the committed files match again).

Each figure sits on its own light, rounded card, so it reads the same on the book's light and dark
pages (an <img> SVG does not inherit the page's CSS colours). Fonts are the generic `sans-serif` and
`monospace` families: nothing is loaded from another host.
"""
from __future__ import annotations

import sys
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from perceiver_edu.config import PerceiverConfig

OUT_DIR = ROOT / "book" / "figures"

# Palette: mid-saturation fills with dark outlines, legible on the light card and for common colour
# vision deficiencies (blue / orange / green / purple are told apart by lightness as well as hue).
CARD, CARD_EDGE = "#f8f8f6", "#d4d4d0"
INK, MUTED = "#1f2933", "#52606d"
ARROW = "#3e4c59"
INPUT = ("#d6e6f5", "#2f6da3")      # the byte array: (fill, outline)
POSITION = ("#cfe9e4", "#2a7f72")   # position features
LATENT = ("#fde2c4", "#c4661f")     # the latent array
CROSS = ("#dcefd6", "#3f8a3a")      # cross-attention modules
TOWER = ("#e6dcf2", "#6b4c9a")      # latent Transformer
OUTPUT = ("#f6d6d6", "#b03a3a")     # decoder and logits
SANS, MONO = "sans-serif", "monospace"
# The book's text column is about 680 px wide at a 1280 px window, so a 760 px figure is shown at
# about 0.9 of its size: text is drawn this much larger to stay at 11 px or more on the page.
FONT_SCALE = 1.1


def number(value: float) -> str:
    """Coordinates with at most two decimals and no trailing zeros: short, stable SVG text."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


class Svg:
    """A minimal SVG writer: shapes are appended as text, `render` wraps them with title and desc."""

    def __init__(self, width: int, height: int, title: str, desc: str):
        self.width, self.height, self.title, self.desc = width, height, title, desc
        self.parts: list = []

    def rect(self, x, y, w, h, fill, stroke, rx=6.0, stroke_width=1.5, dash=None):
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<rect x="{number(x)}" y="{number(y)}" width="{number(w)}" height="{number(h)}" '
                          f'rx="{number(rx)}" fill="{fill}" stroke="{stroke}" '
                          f'stroke-width="{number(stroke_width)}"{dashed}/>')

    def line(self, x1, y1, x2, y2, stroke=ARROW, width=1.0, dash=None):
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<line x1="{number(x1)}" y1="{number(y1)}" x2="{number(x2)}" y2="{number(y2)}" '
                          f'stroke="{stroke}" stroke-width="{number(width)}"{dashed}/>')

    def text(self, x, y, content, size=13, anchor="middle", weight="normal", fill=INK, family=SANS,
             italic=False):
        style = ' font-style="italic"' if italic else ""
        bold = f' font-weight="{weight}"' if weight != "normal" else ""
        self.parts.append(f'<text x="{number(x)}" y="{number(y)}" font-family="{family}" '
                          f'font-size="{number(size * FONT_SCALE)}" text-anchor="{anchor}" '
                          f'fill="{fill}"{bold}{style}>{escape(content)}</text>')

    def lines(self, x, y, contents, size=13, leading=1.3, **style):
        """Several lines of text, the first baseline at y."""
        for i, content in enumerate(contents):
            self.text(x, y + i * size * leading, content, size=size, **style)

    def arrow(self, x1, y1, x2, y2, color=ARROW, width=1.6):
        """A straight arrow whose head ends exactly at (x2, y2)."""
        self.path(f"M{number(x1)},{number(y1)} L{number(x2)},{number(y2)}", color, width, arrow=True)

    def path(self, d, stroke=ARROW, width=1.6, arrow=False, dash=None, fill="none"):
        head = ' marker-end="url(#head)"' if arrow else ""
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<path d="{d}" fill="{fill}" stroke="{stroke}" stroke-width="{number(width)}" '
                          f'stroke-linejoin="round"{dashed}{head}/>')

    def grid(self, x, y, w, h, rows, cols, color, width=0.6):
        """Interior grid lines of a w x h box divided into rows x cols cells."""
        for r in range(1, rows):
            self.line(x, y + h * r / rows, x + w, y + h * r / rows, color, width)
        for c in range(1, cols):
            self.line(x + w * c / cols, y, x + w * c / cols, y + h, color, width)

    def render(self) -> str:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" role="img" aria-labelledby="title desc">\n'
                f'<title id="title">{escape(self.title)}</title>\n<desc id="desc">{escape(self.desc)}</desc>\n'
                f'<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
                f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
                f'fill="{ARROW}"/></marker></defs>\n'
                f'<rect x="1" y="1" width="{self.width - 2}" height="{self.height - 2}" rx="14" '
                f'fill="{CARD}" stroke="{CARD_EDGE}"/>\n')
        return head + "\n".join(self.parts) + "\n</svg>\n"


def module(svg: Svg, x, y, w, h, colours, label_lines, tag=None, size=13):
    """A rounded module box with centred text and an optional weight tag on its top edge."""
    fill, stroke = colours
    svg.rect(x, y, w, h, fill, stroke)
    first = y + h / 2 - (len(label_lines) - 1) * size * 0.65 + size * 0.35
    svg.lines(x + w / 2, first, label_lines, size=size, leading=1.3)
    if tag:
        tag_w = 10 + 8 * len(tag)
        svg.rect(x + w - tag_w + 6, y - 10, tag_w, 19, "#ffffff", stroke, rx=9.5, stroke_width=1.2)
        svg.text(x + w - tag_w / 2 + 6, y + 4, tag, size=12, weight="bold", fill=stroke)


def array(svg: Svg, x, y, w, h, colours, rows=0, cols=0):
    """An array drawn as a box, with a light cell grid when rows/cols are given."""
    fill, stroke = colours
    svg.rect(x, y, w, h, fill, stroke, rx=2, stroke_width=1.3)
    if rows or cols:
        svg.grid(x, y, w, h, max(rows, 1), max(cols, 1), stroke, width=0.5)


# ---------------------------------------------------------------------------------------------
# 1. The architecture, after the paper's Fig. 1


def architecture_svg(config: PerceiverConfig) -> str:
    repeats = config.num_cross_attends - 1
    layers = config.self_attends_per_block
    svg = Svg(760, 372, "The Perceiver architecture",
              f"The input byte array of M x C = {config.num_inputs:,} x {config.input_dim} is read by a "
              f"cross-attend whose queries come from a learned latent array of N x D = {config.num_latents} "
              f"x {config.latent_dim}; a latent Transformer of {layers} self-attention layers follows. The "
              f"pair repeats {config.num_cross_attends} times; the first cross-attend has its own weights, "
              f"cross-attends 2 to {config.num_cross_attends} share one set, and every latent Transformer "
              f"shares one set. The final latents are averaged and projected to logits.")
    svg.text(380, 30, f"The Perceiver, preset {config.name}: {config.num_cross_attends} cross-attends, "
             "shared weights", size=14, weight="bold")
    top, h = 98, 76
    mid = top + h / 2
    # the latent array, queries of the first cross-attend
    array(svg, 26, mid - 34, 50, 68, LATENT, rows=6, cols=4)
    svg.lines(51, mid - 58, ["Latent", "array"], size=12, leading=1.15)
    svg.lines(51, mid + 52, ["N × D", f"{config.num_latents} × {config.latent_dim}"], size=11.5, fill=MUTED)
    svg.arrow(76, mid, 98, mid)
    svg.text(87, mid - 8, "Q", size=11, fill=MUTED)
    module(svg, 100, top, 84, h, CROSS, ["Cross-", "attend"], tag="C₁")
    svg.arrow(184, mid, 202, mid)
    module(svg, 204, top, 104, h, TOWER, ["Latent", "Transformer", f"({layers} layers)"], tag="T", size=12.5)
    svg.arrow(308, mid, 336, mid)
    if repeats:
        svg.rect(326, top - 26, 236, h + 40, "none", MUTED, rx=10, stroke_width=1.2, dash="5 4")
        svg.text(444, top - 33, f"repeated {repeats} more times: cross-attends 2–{config.num_cross_attends}",
                 size=12, fill=MUTED)
        module(svg, 338, top, 84, h, CROSS, ["Cross-", "attend"], tag="C₂")
        svg.arrow(422, mid, 440, mid)
        module(svg, 442, top, 104, h, TOWER, ["Latent", "Transformer", f"({layers} layers)"], tag="T",
               size=12.5)
        svg.arrow(546, mid, 580, mid)
    module(svg, 582, top + 10, 66, h - 20, OUTPUT, ["Average", "over N"], size=12)
    svg.arrow(648, mid, 666, mid)
    module(svg, 668, top + 10, 68, h - 20, OUTPUT, ["Linear", "→ logits"], size=12)
    _architecture_byte_array(svg, config, top + h, repeats)
    _architecture_legend(svg, config)
    return svg.render()


def _architecture_byte_array(svg: Svg, config: PerceiverConfig, module_bottom, repeats):
    y = 252
    array(svg, 100, y, 446 if repeats else 208, 22, INPUT, cols=48 if repeats else 22)
    svg.text(100, y + 40, f"Byte array M × C = {config.num_inputs:,} × {config.input_dim}: every pixel's "
             f"RGB and its {config.position_dim} Fourier position features", size=12, anchor="start")
    for x in ([142, 380] if repeats else [142]):
        svg.arrow(x, y, x, module_bottom + 2)
        svg.text(x + 8, y - 14, "K, V", size=11, anchor="start", fill=MUTED)


def _architecture_legend(svg: Svg, config: PerceiverConfig):
    n = config.num_cross_attends
    svg.lines(26, 322, [
        f"Same tag, same weights: the first cross-attend has its own (C₁), cross-attends 2–{n} share C₂,",
        (f"and all {config.depth} latent Transformers share T (paper, Sec. 3.1 and Table 7). "
        "Arrows between modules carry the N × D latents."),
    ], size=12, anchor="start", fill=MUTED)


# ---------------------------------------------------------------------------------------------
# 2. Shapes through the cpu preset

ARRAY_SCALE = 0.55  # pixels per row and per channel: the input and latent arrays are drawn to scale


def shape_flow_svg(config: PerceiverConfig) -> str:
    p, (gh, gw) = config.patch_size, config.grid
    per_patch = config.input_channels * p * p
    svg = Svg(760, 420, f"Shapes through the {config.name} preset",
              f"An image batch (B, {config.input_channels}, {config.input_axes[0]}, {config.input_axes[1]}) "
              f"is cut into {p}x{p} patches, a {gh} x {gw} grid of {per_patch} values each, flattened to "
              f"M = {config.num_inputs} rows and concatenated with {config.position_dim} Fourier position "
              f"features: the input array (B, {config.num_inputs}, {config.input_dim}). A cross-attend whose "
              f"queries are N = {config.num_latents} learned latents of width D = {config.latent_dim} maps it "
              f"to (B, {config.num_latents}, {config.latent_dim}); a latent Transformer of "
              f"{config.self_attends_per_block} self-attention layers keeps that shape; the mean over the "
              f"latents, a LayerNorm and a linear layer give logits (B, {config.num_classes}). The input and "
              f"latent arrays are drawn to scale.")
    svg.text(380, 30, f"Shapes through the {config.name} preset (input and latent arrays to scale)",
             size=14, weight="bold")
    array_x = _shape_inputs(svg, config, per_patch)
    _shape_model(svg, config, array_x)
    return svg.render()


def _shape_inputs(svg: Svg, config: PerceiverConfig, per_patch) -> float:
    """The image, its patches and the input array; returns the input array's centre x."""
    c, (h, w), (gh, gw), top = config.input_channels, config.input_axes, config.grid, 62
    for i in range(c):  # the colour planes, back to front
        colour = ("#f3c9c9", "#d9ecc9", "#c9d8f3")[i % 3]
        svg.rect(24 + 7 * (c - 1 - i), top + 12 + 7 * i, 62, 62, colour, "#6b7785", rx=2, stroke_width=1.1)
    svg.text(62, top + 108, "image", size=12.5)
    svg.text(62, top + 125, f"(B, {c}, {h}, {w})", size=11.5, family=MONO)
    svg.arrow(106, top + 50, 142, top + 50)
    svg.lines(124, top + 24, [f"{config.patch_size}×{config.patch_size}", "patches"], size=11, leading=1.15,
              fill=MUTED)
    array(svg, 148, top + 15, 70, 70, INPUT, rows=gh, cols=gw)
    svg.rect(148, top + 15, 70 / gw, 70 / gh, INPUT[1], INPUT[1], rx=0, stroke_width=0.5)
    svg.text(183, top + 108, f"{gh} × {gw} patches", size=12.5)
    svg.text(183, top + 125, f"(B, {gh}, {gw}, {per_patch})", size=11.5, family=MONO)
    svg.arrow(222, top + 50, 252, top + 50)
    svg.lines(237, top + 24, ["flatten", "+ pos."], size=11, leading=1.15, fill=MUTED)
    x = 258
    values_w = per_patch * ARRAY_SCALE
    rows_h = config.num_inputs * ARRAY_SCALE
    array(svg, x, top, values_w, rows_h, INPUT)
    array(svg, x + values_w, top, config.position_dim * ARRAY_SCALE, rows_h, POSITION)
    _shape_input_notes(svg, config, per_patch, x + config.input_dim * ARRAY_SCALE + 16, top)
    return x + config.input_dim * ARRAY_SCALE / 2


def _shape_input_notes(svg: Svg, config: PerceiverConfig, per_patch, x, top):
    k, mu = config.num_bands, config.max_resolution or config.grid
    svg.text(x, top + 14, f"input array (B, M, C) = (B, {config.num_inputs}, {config.input_dim})",
             size=12.5, weight="bold", anchor="start")
    rows = [
        (None, (f"M = {config.grid[0]} × {config.grid[1]} = {config.num_inputs} rows, one per patch, "
               "row-major")),
        (INPUT, (f"{per_patch} values = {config.input_channels} colours × {config.patch_size}×"
                f"{config.patch_size} pixels")),
        (POSITION, f"{config.position_dim} Fourier features = {len(config.grid)} axes × (2K + 1):"),
        (None, f"the coordinate, then sines and cosines of K = {k} bands"),
        (None, f"from 1 to μ/2 = {number(mu[0] / 2)} (μ = {mu[0]}"
               + (", the grid size)" if config.max_resolution is None else ")")),
    ]
    for i, (colours, content) in enumerate(rows):
        y = top + 38 + 19 * i
        if colours:
            svg.rect(x, y - 10, 12, 12, colours[0], colours[1], rx=2, stroke_width=1.1)
        indent = 36 if i > 2 else 18
        svg.text(x + indent, y, content, size=12, anchor="start", fill=INK)


def _shape_model(svg: Svg, config: PerceiverConfig, array_x):
    n, d, mid, gap = config.num_latents, config.latent_dim, 300, 20
    lat_w, lat_h = d * ARRAY_SCALE, n * ARRAY_SCALE
    svg.arrow(array_x, 62 + config.num_inputs * ARRAY_SCALE + 2, array_x, mid - 32)
    svg.text(array_x + 8, mid - 44, "K, V", size=11, anchor="start", fill=MUTED)
    cross_w = 96
    latents_x = array_x - cross_w / 2 - 34 - lat_w
    array(svg, latents_x, mid - lat_h / 2, lat_w, lat_h, LATENT)
    svg.text(latents_x + lat_w / 2, mid - lat_h / 2 - 8, "learned latents", size=12)
    svg.text(latents_x + lat_w / 2, mid + lat_h / 2 + 18, f"(N, D) = ({n}, {d})", size=11.5, family=MONO)
    svg.arrow(latents_x + lat_w + 2, mid, array_x - cross_w / 2, mid)
    svg.text(latents_x + lat_w + 16, mid - 7, "Q", size=11, fill=MUTED)
    heads = f"{config.cross_heads} head" + ("s" if config.cross_heads > 1 else "")
    repeat = f" ×{config.num_cross_attends}" if config.num_cross_attends > 1 else ""
    module(svg, array_x - cross_w / 2, mid - 30, cross_w, 60, CROSS, ["cross-attend" + repeat, heads],
           size=12)
    x = array_x + cross_w / 2
    svg.arrow(x, mid, x + gap - 2, mid)
    _latent_block(svg, x + gap, mid, lat_w, lat_h, n, d)
    x += gap + lat_w
    svg.arrow(x + 2, mid, x + gap - 2, mid)
    layers = config.self_attends_per_block * config.depth
    module(svg, x + gap, mid - 30, 126, 60, TOWER, ["latent Transformer",
                                                    f"{layers} layers, {config.latent_heads} heads"], size=12)
    x += gap + 126
    svg.arrow(x, mid, x + gap - 2, mid)
    module(svg, x + gap, mid - 30, 100, 60, OUTPUT, ["mean over N", "LayerNorm", "Linear"], size=11.5)
    x += gap + 100
    svg.arrow(x, mid, x + 16, mid)
    cells = config.num_classes
    svg.rect(x + 18, mid - 2 * cells, 9, 4 * cells, OUTPUT[0], OUTPUT[1], rx=1, stroke_width=1.1)
    svg.grid(x + 18, mid - 2 * cells, 9, 4 * cells, cells, 1, OUTPUT[1], 0.5)
    svg.text(x + 22, mid + 2 * cells + 18, "logits", size=12)
    svg.text(x + 22, mid + 2 * cells + 34, f"(B, {cells})", size=11.5, family=MONO)
    svg.lines(26, 386, [
        (f"Whatever M is, the latents keep N = {n} rows of width D = {d}. Per head, the cross-attend "
        "computes"),
        (f"N × M = {n * config.num_inputs:,} scores, where self-attention on the input array would compute "
        f"M × M = {config.num_inputs ** 2:,}."),
    ], size=12, anchor="start", fill=MUTED)


def _latent_block(svg: Svg, x, mid, w, h, n, d):
    array(svg, x, mid - h / 2, w, h, LATENT)
    svg.text(x + w / 2, mid - h / 2 - 8, "latents", size=12)
    svg.text(x + w / 2, mid + h / 2 + 18, f"(B, {n}, {d})", size=11.5, family=MONO)


# ---------------------------------------------------------------------------------------------
# 3. The cross-attention and self-attention matrices, to scale


def attention_matrices_svg(small: PerceiverConfig, large: PerceiverConfig) -> str:
    ratio_small, ratio_large = small.num_inputs / small.num_latents, large.num_inputs / large.num_latents
    svg = Svg(760, 640, "Cross-attention against self-attention, to scale",
              f"Two rows. {_dataset(small)}: the cross-attention matrix N x M = {small.num_latents} x "
              f"{small.num_inputs} beside the self-attention matrix M x M = {small.num_inputs} x "
              f"{small.num_inputs}, {ratio_small:.0f} times larger. {_dataset(large)}: N x M = "
              f"{large.num_latents} x {large.num_inputs:,} beside M x M = {large.num_inputs:,} x "
              f"{large.num_inputs:,}, {ratio_large:.0f} times larger: the cross-attention matrix is a thin "
              f"strip. Each row has its own scale; within a row, areas are proportional to the number of "
              f"scores.")
    svg.text(380, 30, "The score matrix of one attention head, drawn to scale", size=14, weight="bold")
    _matrix_row(svg, small, 58)
    svg.line(26, 322, 734, 322, CARD_EDGE, 1)
    _matrix_row(svg, large, 340)
    svg.text(380, 624, "Each row has its own scale; within a row, areas are proportional to the number of "
             "scores.", size=12, fill=MUTED)
    return svg.render()


def _dataset(config: PerceiverConfig) -> str:
    h, w = config.input_axes
    name = "CIFAR-10" if (h, w) == (32, 32) else "ImageNet" if (h, w) == (224, 224) else f"{h}×{w} images"
    patches = f" in {config.patch_size}×{config.patch_size} patches" if config.patch_size > 1 else ""
    return f"{name}: {h}×{w} pixels{patches}, preset {config.name}"


def _bytes(count: float) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if count >= size:
            return f"{count / size:,.1f} {unit}"
    return f"{count:,.0f} B"


def _matrix_row(svg: Svg, config: PerceiverConfig, top):
    n, m, side = config.num_latents, config.num_inputs, 170
    strip = side * n / m
    svg.text(26, top + 8, _dataset(config), size=13, weight="bold", anchor="start")
    svg.text(734, top + 8, f"M = {m:,} inputs, N = {config.num_latents} latents", size=12.5,
             anchor="end", fill=MUTED)
    y, x_cross, x_self = top + 44, 80, 310
    _matrix(svg, x_cross, y, side, strip, LATENT, f"N = {n}")
    svg.text(x_cross + side / 2, y + side + 22, "cross-attention: N × M", size=12.5, weight="bold")
    svg.text(x_cross + side / 2, y + side + 40, f"{n * m:,} scores = {_bytes(4 * n * m)}", size=12)
    _matrix(svg, x_self, y, side, side, INPUT, f"M = {m:,}")
    svg.text(x_self + side / 2, y + side + 22, "self-attention on the inputs: M × M", size=12.5,
             weight="bold")
    svg.text(x_self + side / 2, y + side + 40, f"{m * m:,} scores = {_bytes(4 * m * m)}", size=12)
    svg.lines(528, y + 36, [
        f"M × M is M / N = {m / n:,.0f} times",
        "the cross-attention matrix.",
    ], size=13, anchor="start", weight="bold")
    svg.lines(528, y + 86, [
        "float32, one example, one head.",
        "An explicit training step keeps",
        "about three such matrices alive",
        "(chapter 8).",
    ], size=12, anchor="start", fill=MUTED)


def _matrix(svg: Svg, x, y, w, h, colours, rows_label):
    """A score matrix: keys along the top, queries down the side; very thin ones as a solid strip."""
    fill, stroke = colours
    svg.text(x + w / 2, y - 8, "keys: M inputs", size=11.5, fill=MUTED)
    if h >= 4:
        svg.rect(x, y, w, h, fill, stroke, rx=0, stroke_width=1.2)
        svg.text(x - 6, y + h / 2 + 4, rows_label, size=11.5, anchor="end", fill=MUTED)
        return
    svg.rect(x, y, w, h, stroke, stroke, rx=0, stroke_width=0.4)
    svg.text(x - 6, y + h / 2 + 4, rows_label, size=11.5, anchor="end", fill=MUTED)
    svg.lines(x + w / 2, y + 24, [f"{rows_label.split(' = ')[1]} rows: a strip", f"{h:.1f} px high"],
              size=11.5, fill=MUTED)


# ---------------------------------------------------------------------------------------------
# 4. Perceiver IO: encode, process, decode


def perceiver_io_svg(config: PerceiverConfig) -> str:
    svg = Svg(760, 440, "Perceiver IO: encode, process, decode",
              "An input array M x C is encoded by cross-attention into a latent array N x D whose queries "
              "are learned. The latents are processed by L self-attention layers. An output query array "
              "O x E' is decoded by cross-attention against the latents into an output array O x E, one "
              "output per query: one learned query gives the class logits, one query per output position "
              "(for example Fourier features of a pixel's coordinates) gives a dense output of any size.")
    svg.text(380, 30, "Perceiver IO: encode, process, decode (after its paper's Fig. 2)", size=14,
             weight="bold")
    mid = 164
    array(svg, 30, mid - 80, 34, 160, INPUT, rows=14)
    svg.lines(47, mid + 100, ["input array", "M × C"], size=12)
    svg.arrow(64, mid, 112, mid)
    svg.text(88, mid - 8, "K, V", size=11, fill=MUTED)
    array(svg, 121, 62, 52, 26, LATENT, rows=2, cols=4)
    svg.text(147, 54, "latent array N × D (learned)", size=11, fill=MUTED)
    svg.arrow(147, 88, 147, mid - 32)
    svg.text(153, mid - 44, "Q", size=11, anchor="start", fill=MUTED)
    module(svg, 114, mid - 30, 66, 60, CROSS, ["Encode"], size=13)
    svg.arrow(180, mid, 210, mid)
    _latent_with_label(svg, 212, mid, "N × D")
    svg.arrow(264, mid, 294, mid)
    module(svg, 296, mid - 30, 112, 60, TOWER, ["Process", "self-attention"], size=12.5)
    svg.rect(380, mid - 42, 38, 20, "#ffffff", TOWER[1], rx=10, stroke_width=1.2)
    svg.text(399, mid - 27, "× L", size=12, weight="bold", fill=TOWER[1])
    svg.arrow(408, mid, 438, mid)
    _latent_with_label(svg, 440, mid, "N × D")
    svg.arrow(492, mid, 540, mid)
    svg.text(516, mid - 8, "K, V", size=11, fill=MUTED)
    module(svg, 542, mid - 30, 66, 60, CROSS, ["Decode"], size=13)
    array(svg, 558, 236, 34, 92, POSITION, rows=8)
    svg.lines(575, 346, ["output queries", "O × E′"], size=12)
    svg.arrow(575, 236, 575, mid + 32)
    svg.text(581, mid + 56, "Q", size=11, anchor="start", fill=MUTED)
    svg.arrow(608, mid, 650, mid)
    array(svg, 654, mid - 46, 34, 92, OUTPUT, rows=8)
    svg.lines(671, mid + 66, ["output array", "O × E"], size=12)
    _perceiver_io_notes(svg, config)
    return svg.render()


def _latent_with_label(svg: Svg, x, mid, label):
    array(svg, x, mid - 14, 52, 28, LATENT, rows=2, cols=4)
    svg.text(x + 26, mid + 32, label, size=11.5, fill=MUTED)


def _perceiver_io_notes(svg: Svg, config: PerceiverConfig):
    # two kinds of output queries, in the space under the processor
    svg.rect(196, 240, 320, 112, "#ffffff", CARD_EDGE, rx=8, stroke_width=1)
    svg.text(208, 260, "Output queries: what to decode", size=12.5, weight="bold", anchor="start")
    array(svg, 210, 276, 34, 6, POSITION, cols=8)
    svg.lines(256, 283, ["classification: O = 1 learned query,", f"output 1 × {config.num_classes} logits"],
              size=12, anchor="start", leading=1.25)
    array(svg, 210, 318, 34, 24, POSITION, rows=4, cols=8)
    svg.lines(256, 325, ["dense: one query per output position, e.g.",
                         "Fourier features of (x, y); O need not be M"], size=12, anchor="start", leading=1.25)
    svg.lines(30, 392, [
        (f"Preset {config.name} (decoder=\"query\"): M = {config.num_inputs:,}, C = {config.input_dim}, "
        f"N = {config.num_latents}, D = {config.latent_dim}, one encoder cross-attend, "
        f"L = {config.depth} × {config.self_attends_per_block}"),
        (f"self-attention layers ({config.self_attends_per_block} distinct, shared across the {config.depth} "
        "blocks). Cost O([M + O + LN] N F), linear in M and in O (App. E.2)."),
    ], size=12, anchor="start", fill=MUTED)


# ---------------------------------------------------------------------------------------------


def diagrams() -> dict:
    """File name -> SVG text, drawn from the current presets."""
    cpu = PerceiverConfig.preset("cpu")
    imagenet = PerceiverConfig.preset("imagenet_perceiver")
    return {
        "perceiver_architecture.svg": architecture_svg(imagenet),
        "shape_flow_cpu.svg": shape_flow_svg(cpu),
        "attention_matrices.svg": attention_matrices_svg(cpu, imagenet),
        "perceiver_io.svg": perceiver_io_svg(PerceiverConfig.preset("imagenet_io")),
    }


def write_all(out_dir: Path = OUT_DIR) -> list:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in diagrams().items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR):
        print(written_path)

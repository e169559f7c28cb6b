"""Attention explorers: a live one that runs the model, and static ones that work with no kernel.

Live (`AttentionExplorer`): ipywidgets controls in Jupyter or Colab. Every change re-renders a PNG
into an `ipywidgets.Image`, so tests can drive the controls from Python and read the bytes.

Static (`static_choice`, and `static_explorer` built on it): pictures precomputed for every
combination of one to three choices, each an `<img>` with its alt text in an `ipywidgets.HTML`
(an `ipywidgets.Image` renders with no alt attribute, which a screen reader cannot describe), held
by nested `Stack`s whose `selected_index` is tied to a Dropdown, a slider or toggle buttons by
`jslink`. The links run in the browser, and the notebook's saved widget state carries the PNGs, so
the published page switches pictures with no Python behind it.

Both work with ipywidgets 7.7 (what Colab preinstalls, and keeps: the package accepts it) and 8.
Colab needs no `enable_custom_widget_manager()`: only core widgets are used, which Colab's own
widget manager renders (the custom one is for third-party widgets, and loads from a CDN).
ipywidgets 7 has no `Stack`: there a static choice shows the same pictures in nested tabs, and
says so.
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import ipywidgets as widgets
import matplotlib
import numpy as np
import torch
from PIL import Image as PILImage

from .attention_maps import AttentionRecord, collect_attention, effective_pixels, grid_cell, rank_latents, to_grid
from .visualize import ATTENTION_CMAP, figure_to_png, image_hwc, overlay_rgb, show_pixel_latents, upsample_map

GAP = 2  # white pixels between panels
STATIC_EXPLORER_CLASS = "perceiver-static-explorer"
STATIC_CHOICE_CLASS = "perceiver-static-choice"
HAS_STACK = hasattr(widgets, "Stack")  # ipywidgets 8 and later
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def widget_bundle(widget, text: str, **kwargs) -> dict:
    """The MIME bundle that displays `widget`, with `text` as its plain-text form (ipywidgets 7 or 8)."""
    if hasattr(widget, "_repr_mimebundle_"):  # ipywidgets 8
        bundle = dict(widget._repr_mimebundle_(**kwargs) or {})
    else:  # ipywidgets 7 displays through _ipython_display_; this is the bundle it sends
        bundle = {"application/vnd.jupyter.widget-view+json": {
            "version_major": 2, "version_minor": 0, "model_id": widget.model_id}}
    bundle["text/plain"] = text
    return bundle


# Rendering -------------------------------------------------------------------------------------
def _to_uint8(array: np.ndarray) -> np.ndarray:
    return (np.clip(array, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(_to_uint8(array)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _hstack(panels: list) -> np.ndarray:
    gap = np.ones((panels[0].shape[0], GAP, 3))
    parts = [panels[0]]
    for panel in panels[1:]:
        parts += [gap, panel]
    return np.concatenate(parts, axis=1)


def attention_panels(image, attention_map, scale: int = 4, alpha: float = 0.85, pixel=None,
                     panels=("image", "map", "overlay")) -> np.ndarray:
    """(H*scale, ...) RGB array: the image, the map alone and the map over the image, side by side.

    The map is coloured relative to its own maximum (see `visualize.overlay_rgb`); `pixel` (y, x) draws a
    cyan cross on the image and overlay panels.
    """
    picture = image_hwc(image)                                          # (H, W, 3)
    heat = upsample_map(attention_map, picture.shape[:2])               # (H, W)
    colored = matplotlib.colormaps[ATTENTION_CMAP](heat / max(heat.max(), 1e-12))[..., :3]
    choices = {"image": picture, "map": colored, "overlay": overlay_rgb(image, attention_map, alpha)}
    out = []
    for name in panels:
        big = choices[name].repeat(scale, axis=0).repeat(scale, axis=1).copy()
        if pixel is not None and name in ("image", "overlay"):
            y, x = (int(p) * scale + scale // 2 for p in pixel)
            big[y, max(x - 2 * scale, 0):x + 2 * scale + 1] = (0, 1, 1)
            big[max(y - 2 * scale, 0):y + 2 * scale + 1, x] = (0, 1, 1)
        out.append(big)
    return _hstack(out)


def attention_png(image, attention_map, scale: int = 4, **options) -> bytes:
    """PNG bytes of `attention_panels` (a few KB at scale 3-4)."""
    return _png(attention_panels(image, attention_map, scale, **options))


# Live explorer ---------------------------------------------------------------------------------
class AttentionExplorer:
    """Pick an image, a latent (or the top-k latents at a pixel), a head and a cross-attend.

    model: a Perceiver; images: (B, 3, H, W) uint8 or floats in [0, 1] (e.g. the test set);
    labels: (B,) ints, optional; classes: class names. Attention is computed for one image at a
    time, when it is picked, and the last few are cached.
    """

    def __init__(self, model, images, labels=None, classes=None, scale: int = 4, cache_size: int = 32):
        self.model, self.scale, self.cache_size = model, scale, cache_size
        self.images = images
        self.labels = None if labels is None else torch.as_tensor(labels).cpu()
        config = model.config
        self.classes = list(classes) if classes is not None else [str(c) for c in range(config.num_classes)]
        self.grid, self.image_size = tuple(config.grid), tuple(images.shape[-2:])
        self._cache: dict = {}
        slider = dict(continuous_update=False, style={"description_width": "90px"})

        self.index = widgets.IntSlider(0, 0, len(images) - 1, description="image #", **slider)
        self.class_picker = widgets.Dropdown(options=[("(any)", -1)] + [(c, i) for i, c in enumerate(self.classes)],
                                             value=-1, description="next of class", disabled=self.labels is None,
                                             style={"description_width": "90px"})
        self.mode = widgets.ToggleButtons(options=[("one latent", "one"), ("top-k at pixel", "top")],
                                          value="one", description="show")
        self.latent = widgets.IntSlider(0, 0, config.num_latents - 1, description="latent n", **slider)
        self.k = widgets.IntSlider(4, 1, 8, description="k", **slider)
        self.head = widgets.IntSlider(0, 0, config.cross_heads - 1, description="head",
                                      disabled=config.cross_heads == 1, **slider)
        self.cross_attend = widgets.IntSlider(0, 0, config.num_cross_attends - 1, description="cross-attend",
                                              disabled=config.num_cross_attends == 1, **slider)
        self.pixel_y = widgets.IntSlider(self.image_size[0] // 2, 0, self.image_size[0] - 1,
                                         description="pixel y", **slider)
        self.pixel_x = widgets.IntSlider(self.image_size[1] // 2, 0, self.image_size[1] - 1,
                                         description="pixel x", **slider)
        self.info = widgets.HTML()
        self.maps_view = widgets.Image(format="png")
        self.reverse_view = widgets.Image(format="png")
        self.widget = widgets.VBox([
            widgets.HBox([self.index, self.class_picker]),
            widgets.HBox([self.mode, self.latent, self.k]),
            widgets.HBox([self.head, self.cross_attend]),
            self.info, self.maps_view,
            widgets.HTML("<b>Reverse view</b>: which latents look at this pixel?"),
            widgets.HBox([self.pixel_y, self.pixel_x]), self.reverse_view])
        for control in (self.index, self.head, self.cross_attend):
            control.observe(self.refresh, names="value")
        for control in (self.mode, self.latent, self.k):
            control.observe(self._update_maps, names="value")
        for control in (self.pixel_y, self.pixel_x):
            control.observe(self._update_pixel, names="value")
        self.class_picker.observe(self._jump_to_class, names="value")
        self.refresh()

    def _repr_mimebundle_(self, **kwargs):
        return widget_bundle(self.widget, f"AttentionExplorer over {len(self.images)} images "
                                          f"(live: needs a running kernel)", **kwargs)

    def _attention(self, index: int):
        """(cross: list of (heads, N, M) per cross-attend, class probabilities (classes,))."""
        if index not in self._cache:
            image = self.images[index:index + 1]
            image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
            record = collect_attention(self.model, image)
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = ([w[0] for w in record.cross], record.probabilities[0])
        return self._cache[index]

    def _image(self, index: int) -> torch.Tensor:
        image = self.images[index]
        return image.float() / 255 if image.dtype == torch.uint8 else image.float()

    def current_weights(self) -> torch.Tensor:
        """(N, M): the selected image's attention for the selected cross-attend and head."""
        cross, _ = self._attention(self.index.value)
        return cross[self.cross_attend.value][self.head.value]

    def _near_pixel(self) -> torch.Tensor:
        """(h, w) mask: the picked pixel's grid cell and its 8 neighbours."""
        row, col = grid_cell((self.pixel_y.value, self.pixel_x.value), self.image_size, self.grid)
        mask = torch.zeros(self.grid, dtype=torch.bool)
        mask[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2] = True
        return mask

    def refresh(self, change=None):
        self._update_maps()
        self._update_pixel()

    def _update_maps(self, change=None):
        index = self.index.value
        weights = self.current_weights()                      # (N, M)
        maps = to_grid(weights, self.grid)                    # (N, h, w)
        image = self._image(index)
        _, probs = self._attention(index)
        guess = int(probs.argmax())
        truth = "" if self.labels is None else f", true <b>{html.escape(self.classes[int(self.labels[index])])}</b>"
        text = f"test image #{index}: model says <b>{html.escape(self.classes[guess])}</b> ({probs[guess]:.0%}){truth}. "
        if self.mode.value == "one":
            n = self.latent.value
            self.maps_view.value = attention_png(image, maps[n], self.scale)
            text += (f"Latent {n}: peak weight {weights[n].max():.3f}, spread over "
                     f"{effective_pixels(weights[n]):.1f} of {weights.shape[-1]} cells.")
        else:
            top, mass = rank_latents(weights, self.k.value, self._near_pixel())
            pixel = (self.pixel_y.value, self.pixel_x.value)
            rows = [attention_panels(image, maps[n], self.scale, panels=("overlay",), pixel=pixel) for n in top]
            self.maps_view.value = _png(_hstack(rows))
            text += "Top latents near the pixel (mass in its 3x3 cells): " + ", ".join(
                f"{int(n)} ({float(m):.3f})" for n, m in zip(top, mass)) + "."
        self.info.value = text

    def _update_pixel(self, change=None):
        pixel = (self.pixel_y.value, self.pixel_x.value)
        row, col = grid_cell(pixel, self.image_size, self.grid)
        at_pixel = self.current_weights()[:, row * self.grid[1] + col]  # (N,)
        self.reverse_view.value = figure_to_png(show_pixel_latents(self._image(self.index.value), at_pixel, pixel))
        if change is not None and self.mode.value == "top":
            self._update_maps()

    def _jump_to_class(self, change):
        wanted = change["new"]
        if wanted < 0 or self.labels is None:
            return
        order = torch.roll(torch.arange(len(self.labels)), -(self.index.value + 1))
        matches = order[self.labels[order] == wanted]
        if len(matches):
            self.index.value = int(matches[0])
        self.class_picker.value = -1  # back to "(any)", so picking the same class again finds the next one


# Static choice: precomputed pictures behind browser-side controls ----------------------------------
@dataclass
class Control:
    """One choice of a static picture: its name, its labels, and the widget that offers it.

    kind: "dropdown", "slider" (a SelectionSlider) or "toggle" (ToggleButtons); "" means a dropdown
    for the first control and a slider for the others. width: CSS width of the widget, e.g. "420px".
    """
    name: str
    labels: Sequence[str]
    kind: str = ""
    width: str | None = None


class StaticChoice:
    """What `static_choice` built: the widget, plus what tests and callers inspect.

    controls: the pickers (ipywidgets 8), one per Control, else []; root: the outermost Stack (or
    Tab); stacks[d]: every container switched by control d; links: the jslinks; png_sizes: bytes of
    each picture; uses_stack: False where ipywidgets 7's tabs stand in for Stack and the pickers.
    """

    def __init__(self, widget, controls, specs, root, stacks, links, png_sizes, uses_stack, pngs=None, alts=None):
        self.widget, self.controls, self.specs, self.root = widget, controls, specs, root
        self.stacks, self.links, self.png_sizes, self.uses_stack = stacks, links, png_sizes, uses_stack
        self.pngs, self.alts = pngs or {}, alts or {}  # by tuple of indices, one per control

    @property
    def payload_bytes(self) -> int:
        return sum(self.png_sizes)

    def page(self, *indices: int):
        """The widget shown for one combination of choices: VBox([HTML with the <img>, caption?])."""
        if len(indices) != len(self.specs):
            raise ValueError(f"give one index per control ({len(self.specs)}), got {indices}")
        node = self.root
        for index in indices:
            node = node.children[index]
        return node

    def picture(self, *indices: int) -> bytes:
        """PNG bytes shown for one combination of choices."""
        self.page(*indices)  # checks the number of indices
        return self.pngs[tuple(indices)]

    def alt(self, *indices: int) -> str:
        """The alt text of the picture shown for one combination of choices."""
        self.page(*indices)
        return self.alts[tuple(indices)]

    def describe(self) -> str:
        sizes = " x ".join(f"{len(spec.labels)} {spec.name}" for spec in self.specs)
        shown = "" if self.uses_stack else " (tabs: ipywidgets 7)"
        return f"StaticChoice: {sizes}, {self.payload_bytes / 1024:.0f} KB of PNG{shown}"

    def _repr_mimebundle_(self, **kwargs):
        return widget_bundle(self.widget, self.describe(), **kwargs)


def _as_png(picture) -> bytes:
    """PNG bytes from PNG bytes, a matplotlib figure (closed after) or an (H, W, 3) array in [0, 1]."""
    if isinstance(picture, (bytes, bytearray, memoryview)):
        png = bytes(picture)
        if not png.startswith(PNG_SIGNATURE):
            raise ValueError("a picture given as bytes must be a PNG file (it does not start like one)")
        return png
    if hasattr(picture, "savefig"):  # a matplotlib figure: re-encode, optimized, to save page weight
        rgb = PILImage.open(io.BytesIO(figure_to_png(picture))).convert("RGB")
        buffer = io.BytesIO()
        rgb.save(buffer, format="PNG", optimize=True)
        return buffer.getvalue()
    array = np.asarray(picture, dtype=float)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise TypeError(f"a picture is PNG bytes, a matplotlib figure or an (H, W, 3) array; got "
                        f"{type(picture).__name__} of shape {getattr(array, 'shape', '?')}")
    return _png(array)


def _entries(tree, spec: Control, where: str) -> list:
    """The entries of one level of a nested picture (or caption) tree, in the order of spec.labels."""
    if isinstance(tree, Mapping):
        missing = [label for label in spec.labels if label not in tree]
        if missing:
            raise KeyError(f"{where} has no entry for {spec.name} {missing[0]!r}")
        return [tree[label] for label in spec.labels]
    if not isinstance(tree, Sequence) or isinstance(tree, (str, bytes)):
        raise TypeError(f"{where} should hold one entry per {spec.name}, got {type(tree).__name__}")
    if len(tree) != len(spec.labels):
        raise ValueError(f"{where} has {len(tree)} entries, but control {spec.name!r} has "
                         f"{len(spec.labels)} labels")
    return list(tree)


PICKERS = {"": None, "dropdown": widgets.Dropdown, "toggle": widgets.ToggleButtons,
           "slider": lambda **options: widgets.SelectionSlider(continuous_update=True, **options)}


def _picker(spec: Control, first: bool):
    make = PICKERS[spec.kind or ("dropdown" if first else "slider")]
    options = dict(options=list(spec.labels), index=0, description=spec.name)
    if spec.width:
        options["layout"] = widgets.Layout(width=spec.width)
    return make(**options)


def _check_controls(controls) -> list[Control]:
    specs = [c if isinstance(c, Control) else Control(*c) for c in controls]
    if not 1 <= len(specs) <= 3:
        raise ValueError(f"a static choice takes 1 to 3 controls, got {len(specs)}")
    specs = [replace(spec, labels=[str(label) for label in spec.labels]) for spec in specs]  # callers' stay as given
    for spec in specs:
        if not spec.labels or len(set(spec.labels)) != len(spec.labels):
            raise ValueError(f"control {spec.name!r} needs distinct labels, at least one: {spec.labels}")
        if spec.kind not in PICKERS:
            raise ValueError(f"control {spec.name!r}: kind must be one of {sorted(PICKERS)}, not {spec.kind!r}")
    return specs


def picture_html(png: bytes, alt: str) -> str:
    """An <img> holding `png` as a data URL, with its alt text (escaped), scaled down to fit."""
    if not alt or not alt.strip():
        raise ValueError("every picture needs an alt text that says what it shows")
    source = base64.b64encode(png).decode("ascii")
    return (f'<img src="data:image/png;base64,{source}" alt="{html.escape(alt.strip(), quote=True)}" '
            f'style="max-width:100%;height:auto">')


def _default_alt(path) -> str:
    """An alt text from the choices that select a picture, when the caller gives none."""
    choice = ", ".join(f"{spec.name} {label}" for spec, label in path)
    return f"Precomputed picture for {choice}."


def static_choice(pictures, controls, captions=None, header: str | None = None,
                  css_class: str | None = None, alts=None) -> StaticChoice:
    """Precomputed pictures, one per combination of choices, switched in the browser with no kernel.

    controls: 1 to 3 `Control`s, or (name, labels[, kind[, width]]) tuples, outermost first.
    pictures: nested one level per control, each level a sequence in label order or a dict keyed by
    label, e.g. pictures[image][latent] for controls [("image", ...), ("latent", ...)]. A picture
    is PNG bytes, a matplotlib figure or an (H, W, 3) array in [0, 1]. captions: None, or nested
    like pictures, an HTML line under each picture. header: an HTML line above the pictures.
    alts: the pictures' alt texts (plain text, one or two sentences saying what each shows), nested
    like pictures; None names the choices ("Precomputed picture for image #4, latent 6.").

    ipywidgets 8: one picker per control; nested Stacks of pages; `jslink(picker.index,
    stack.selected_index)` for every stack of each depth, so the browser alone switches pages.
    ipywidgets 7 has no Stack: nested Tabs titled by the labels are the controls, and a note says so.
    Every small widget shares one Layout (and the captions one style): each would otherwise store
    its own copy of every default in the page's widget state (about 1 KB apiece).
    """
    specs = _check_controls(controls)
    layout = widgets.Layout()
    caption_style = widgets.HTML.class_traits()["style"].klass()  # HTMLStyle (8), DescriptionStyle (7)
    sizes: list[int] = []
    pngs, alt_texts = {}, {}
    stacks: list[list] = [[] for _ in specs]

    def leaf(picture, caption, alt, path):
        png = _as_png(picture)
        sizes.append(len(png))
        key = tuple(spec.labels.index(label) for spec, label in path)
        pngs[key] = png
        alt_texts[key] = str(alt) if alt is not None else _default_alt(path)
        lines = [] if HAS_STACK else ["; ".join(f"{spec.name}: {html.escape(label)}" for spec, label in path)]
        lines += [] if caption is None else [str(caption)]
        children = [widgets.HTML(picture_html(png, alt_texts[key]), layout=layout, style=caption_style)]
        children += [widgets.HTML(" | ".join(lines), layout=layout, style=caption_style)] if lines else []
        return widgets.VBox(children, layout=layout)

    def build(tree, caption_tree, alt_tree, depth, path):
        spec = specs[depth]
        where = "pictures" + "".join(f"[{label!r}]" for _, label in path)
        entries = _entries(tree, spec, where)
        notes = [None] * len(entries) if caption_tree is None else _entries(caption_tree, spec, "captions" + where[8:])
        alt_list = [None] * len(entries) if alt_tree is None else _entries(alt_tree, spec, "alts" + where[8:])
        children = []
        for label, entry, note, alt in zip(spec.labels, entries, notes, alt_list):
            step = path + [(spec, label)]
            last = depth == len(specs) - 1
            children.append(leaf(entry, note, alt, step) if last
                            else build(entry, note, alt, depth + 1, step))
        if HAS_STACK:
            container = widgets.Stack(children, selected_index=0, layout=layout)
        else:
            container = widgets.Tab(children, layout=layout)
            for i, label in enumerate(spec.labels):
                container.set_title(i, label)
        stacks[depth].append(container)
        return container

    root = build(pictures, captions, alts, 0, [])
    rows = [] if header is None else [widgets.HTML(header)]
    if HAS_STACK:
        pickers = [_picker(spec, first=d == 0) for d, spec in enumerate(specs)]
        links = [widgets.jslink((picker, "index"), (stack, "selected_index"))
                 for picker, level in zip(pickers, stacks) for stack in level]
        widget = widgets.VBox(pickers + rows + [root])
    else:
        pickers, links = [], []
        note = (f"ipywidgets {widgets.__version__} has no Stack widget, so these precomputed pictures "
                f"are in tabs here (ipywidgets 8 shows {', '.join(s.name for s in specs)} pickers).")
        widget = widgets.VBox([widgets.HTML(f"<i>{html.escape(note)}</i>")] + rows + [root])
    for name in (STATIC_CHOICE_CLASS, css_class):
        if name:
            widget.add_class(name)  # how the browser tests find it on the page
    return StaticChoice(widget, pickers, specs, root, stacks, links, sizes, HAS_STACK, pngs, alt_texts)


# Static attention explorer -------------------------------------------------------------------------
class StaticExplorer:
    """A static choice of (image, latent) attention maps, with the names chapter 7 and its tests use.

    image_picker, latent_picker: the Dropdown and SelectionSlider (None on ipywidgets 7); outer: the
    container switched by the image; inner: those switched by the latent.
    """

    def __init__(self, choice: StaticChoice):
        self.choice, self.widget, self.links, self.png_sizes = choice, choice.widget, choice.links, choice.png_sizes
        self.image_picker, self.latent_picker = (choice.controls or [None, None])
        self.outer, self.inner = choice.root, list(choice.root.children)

    @property
    def payload_bytes(self) -> int:
        return sum(self.png_sizes)

    def _repr_mimebundle_(self, **kwargs):
        text = (f"StaticExplorer: {len(self.inner)} images x {len(self.inner[0].children)} latents, "
                f"{self.payload_bytes / 1024:.0f} KB of PNG")
        return widget_bundle(self.widget, text, **kwargs)


def static_explorer(record: AttentionRecord, latents, labels=None, classes=None, image_ids=None,
                    cross_attend: int = 0, head: int = 0, scale: int = 3) -> StaticExplorer:
    """Precompute one PNG per (image, latent) of `record` and tie them to browser-side controls.

    record: from `collect_attention` on the few images to show; latents: the latent indices offered;
    image_ids: how to name the images (default 0, 1, ...), e.g. their test-set indices.
    """
    maps = record.maps(cross_attend)[:, head]                         # (B, N, h, w)
    weights = record.cross[cross_attend][:, head]                     # (B, N, M)
    probs = record.probabilities
    classes = list(classes) if classes is not None else [str(c) for c in range(probs.shape[-1])]
    image_ids = list(image_ids) if image_ids is not None else list(range(len(maps)))
    latents = [int(n) for n in latents]
    options, pictures, captions, alts = [], [], [], []
    for b in range(len(maps)):
        guess = int(probs[b].argmax())
        truth = "" if labels is None else f"{classes[int(labels[b])]}, "
        options.append(f"#{image_ids[b]}: {truth}model says {classes[guess]} ({probs[b, guess]:.0%})")
        pictures.append([attention_png(record.images[b], maps[b, n], scale) for n in latents])
        captions.append([f"latent {n}: peak {weights[b, n].max():.3f}, spread over "
                         f"{effective_pixels(weights[b, n]):.1f} of {weights.shape[-1]} cells" for n in latents])
        shown = f"test image #{image_ids[b]}" + ("" if labels is None else f" ({classes[int(labels[b])]})")
        alts.append([f"Three panels: {shown}, latent {n}'s attention map alone (bright where it "
                     f"attends), and the map laid over the image." for n in latents])
    choice = static_choice(
        pictures, [Control("image", options, "dropdown", "420px"),
                   Control("latent", [f"latent {n}" for n in latents], "slider")],
        captions, header="image | attention map | map over the image (colours relative to each map's peak)",
        css_class=STATIC_EXPLORER_CLASS, alts=alts)
    return StaticExplorer(choice)

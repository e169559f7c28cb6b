"""Attention explorers: a live one that runs the model, and a static one that works with no kernel.

Live (`AttentionExplorer`): ipywidgets 8 controls in Jupyter or Colab. Every change re-renders a
PNG into an `ipywidgets.Image`, so tests can drive the controls from Python and read the bytes.

Static (`static_explorer`): PNGs precomputed for a few images x latents, held by `ipywidgets.Image`
children of nested `Stack`s whose `selected_index` is tied to a Dropdown and a slider by `jslink`.
The links run in the browser, and the notebook's saved widget state carries the PNGs, so the
published page switches maps with no Python behind it.
"""
from __future__ import annotations

import html
import io
import sys

import ipywidgets as widgets
from ipywidgets.widgets.widget_string import HTMLStyle
import matplotlib
import numpy as np
import torch
from PIL import Image as PILImage

from .attention_maps import AttentionRecord, collect_attention, effective_pixels, grid_cell, rank_latents, to_grid
from .visualize import ATTENTION_CMAP, figure_to_png, image_hwc, overlay_rgb, show_pixel_latents, upsample_map

GAP = 2  # white pixels between panels
STATIC_EXPLORER_CLASS = "perceiver-static-explorer"


def enable_colab_widgets() -> bool:
    """In Colab, switch on the custom widget manager that ipywidgets 8 needs there. Elsewhere: no-op."""
    if "google.colab" not in sys.modules:
        return False
    from google.colab import output  # type: ignore[import-not-found]
    output.enable_custom_widget_manager()
    return True


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
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = f"AttentionExplorer over {len(self.images)} images (live: needs a running kernel)"
        return bundle

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


# Static explorer -------------------------------------------------------------------------------
class StaticExplorer:
    """The widget tree of a static explorer plus what tests need: pickers, stacks, links, PNG sizes."""

    def __init__(self, widget, image_picker, latent_picker, outer, inner, links, png_sizes):
        self.widget, self.image_picker, self.latent_picker = widget, image_picker, latent_picker
        self.outer, self.inner, self.links, self.png_sizes = outer, inner, links, png_sizes

    @property
    def payload_bytes(self) -> int:
        return sum(self.png_sizes)

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = (f"StaticExplorer: {len(self.inner)} images x {len(self.inner[0].children)} "
                                f"latents, {self.payload_bytes / 1024:.0f} KB of PNG")
        return bundle


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
    # One Layout and one style shared by the 80-odd small widgets: each would otherwise store its own
    # copy of every default in the page's widget state (about 1 KB apiece).
    layout, caption_style = widgets.Layout(), HTMLStyle()
    options, inner, sizes = [], [], []
    for b in range(len(maps)):
        guess = int(probs[b].argmax())
        truth = "" if labels is None else f"{classes[int(labels[b])]}, "
        options.append(f"#{image_ids[b]}: {truth}model says {classes[guess]} ({probs[b, guess]:.0%})")
        pages = []
        for n in latents:
            png = attention_png(record.images[b], maps[b, n], scale)
            sizes.append(len(png))
            caption = widgets.HTML(f"latent {n}: peak {weights[b, n].max():.3f}, spread over "
                                   f"{effective_pixels(weights[b, n]):.1f} of {weights.shape[-1]} cells",
                                   layout=layout, style=caption_style)
            pages.append(widgets.VBox([widgets.Image(value=png, format="png", layout=layout), caption],
                                      layout=layout))
        inner.append(widgets.Stack(pages, selected_index=0, layout=layout))
    outer = widgets.Stack(inner, selected_index=0, layout=layout)
    image_picker = widgets.Dropdown(options=options, index=0, description="image",
                                    layout=widgets.Layout(width="420px"))
    latent_picker = widgets.SelectionSlider(options=[f"latent {n}" for n in latents], index=0,
                                            description="latent", continuous_update=True)
    links = [widgets.jslink((image_picker, "index"), (outer, "selected_index"))]
    links += [widgets.jslink((latent_picker, "index"), (stack, "selected_index")) for stack in inner]
    header = widgets.HTML("image | attention map | map over the image (colours relative to each map's peak)")
    widget = widgets.VBox([image_picker, latent_picker, header, outer])
    widget.add_class(STATIC_EXPLORER_CLASS)  # how the browser test finds it on the page
    return StaticExplorer(widget, image_picker, latent_picker, outer, inner, links, sizes)

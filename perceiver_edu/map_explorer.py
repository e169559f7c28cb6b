"""Chapter 7's static pictures of attention maps: before and after the softmax, while training, and
the reverse view. All are `explorer.static_choice`s: precomputed PNGs switched in the browser with
no kernel.

- `softmax_switch_explorer`: (image, latent, view) with view = the softmax weights or the
  pre-softmax logits, the paper's way of drawing Fig. 3 ("We visualize attention maps before the
  softmax, as the softmax outputs are very sparse and hard to interpret", Sec. 4.1). It carries the
  CSS class of chapter 7's static explorer, so the browser test drives it.
- `epoch_explorer`: (image, epoch) from a `map_history.MapHistory`: the same latents' logits and
  weights after every epoch of a training run.
- `pixel_explorer`: (image, pixel), the reverse view: how much of each latent's attention lands on
  one pixel's grid cell, and the map of the latent that puts the most there.

Colours: a weight map is scaled to its own peak (0 dark, peak bright); a logit map from its own
minimum (dark) to its maximum (bright), since logits have no natural zero. Both use the book's
attention colour map.
"""
from __future__ import annotations

import io

import matplotlib
import numpy as np
import torch
from PIL import Image as PILImage

from .attention_maps import (AttentionRecord, chance_lattice_energy, effective_pixels, grid_cell,
                             lattice_energy)
from .explorer import STATIC_EXPLORER_CLASS, Control, StaticChoice, attention_panels, static_choice
from .visualize import ATTENTION_CMAP, image_hwc, upsample_map

VIEWS = ("after softmax", "before softmax")
EPOCH_EXPLORER_CLASS = "perceiver-epoch-explorer"
PIXEL_EXPLORER_CLASS = "perceiver-pixel-explorer"
GAP = 2
COLOURS = 256  # palette PNGs: about half the bytes of RGB ones, and no visible difference here


def compact_png(picture: np.ndarray, colours: int = COLOURS) -> bytes:
    """PNG bytes of an (H, W, 3) array in [0, 1], as a palette of `colours` (no dithering).

    The pages carry hundreds of these pictures, so their size is the page's size.
    """
    rgb = (np.clip(picture, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    image = PILImage.fromarray(rgb).quantize(colors=colours, method=PILImage.Quantize.MEDIANCUT,
                                             dither=PILImage.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def rescaled(values: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> the same maps shifted and scaled to [0, 1] each (min 0, max 1; flat -> 0)."""
    low = values.amin(dim=(-2, -1), keepdim=True)
    span = values.amax(dim=(-2, -1), keepdim=True) - low
    return (values - low) / span.clamp_min(1e-12)


def _label(classes, labels, b) -> str:
    return "" if labels is None else f" ({classes[int(labels[b])]})"


def softmax_switch_explorer(record: AttentionRecord, latents, labels=None, classes=None,
                            image_ids=None, cross_attend: int = 0, head: int = 0,
                            scale: int = 3) -> StaticChoice:
    """One picture per (image, latent, view): image | map | map over the image.

    record: from `collect_attention(..., include_logits=True)`. The view control's labels are
    VIEWS: the softmax weights, then the logits QK^T / sqrt(d) they come from. Captions give the
    weights' peak and spread, and the logits' range and `lattice_energy` (with its white-noise
    level).
    """
    weights = record.maps(cross_attend)[:, head]                        # (B, N, h, w)
    logits = record.logit_maps(cross_attend)[:, head]                   # (B, N, h, w)
    lattice = lattice_energy(logits)                                    # (B, N)
    chance = chance_lattice_energy(record.grid)
    probs = record.probabilities
    classes = list(classes) if classes is not None else [str(c) for c in range(probs.shape[-1])]
    image_ids = list(image_ids) if image_ids is not None else list(range(len(weights)))
    latents = [int(n) for n in latents]
    cells = weights.shape[-1] * weights.shape[-2]
    options, pictures, captions, alts = [], [], [], []
    for b in range(len(weights)):
        guess = int(probs[b].argmax())
        truth = "" if labels is None else f"{classes[int(labels[b])]}, "
        options.append(f"#{image_ids[b]}: {truth}model says {classes[guess]} "
                       f"({probs[b, guess]:.0%})")
        shown = f"test image #{image_ids[b]}{_label(classes, labels, b)}"
        pictures.append([[compact_png(attention_panels(record.images[b], weights[b, n], scale)),
                          compact_png(attention_panels(record.images[b], rescaled(logits[b, n]),
                                                       scale))]
                         for n in latents])
        captions.append([[
            f"latent {n}, softmax weights: peak {weights[b, n].max():.3f}, spread over "
            f"{effective_pixels(weights[b, n].flatten()):.1f} of {cells} cells",
            f"latent {n}, logits: {logits[b, n].min():.2f} to {logits[b, n].max():.2f}; "
            f"{lattice.axis[b, n]:.0%} of their variance on the axes of the spectrum "
            f"(white noise: {chance.axis:.0%})"] for n in latents])
        alts.append([[
            f"Three panels: {shown}, latent {n}'s softmax attention map alone (bright where it "
            f"attends), and the map laid over the image.",
            f"Three panels: {shown}, latent {n}'s pre-softmax logits alone (bright where they are "
            f"highest), and the logits laid over the image."] for n in latents])
    return static_choice(
        pictures, [Control("image", options, "dropdown", "420px"),
                   Control("latent", [f"latent {n}" for n in latents], "slider"),
                   Control("view", list(VIEWS), "toggle")],
        captions, header="image | map | map over the image (weights: colours relative to the "
                         "map's peak; logits: from the map's minimum to its maximum)",
        css_class=STATIC_EXPLORER_CLASS, alts=alts)


def _colour(values: np.ndarray, size) -> np.ndarray:
    """(h, w) in [0, 1] -> (H, W, 3) in the attention colour map, upsampled to `size`."""
    return matplotlib.colormaps[ATTENTION_CMAP](upsample_map(values, size))[..., :3]


def _row(panels: list) -> np.ndarray:
    gap = np.ones((panels[0].shape[0], GAP, 3))
    parts = [panels[0]]
    for panel in panels[1:]:
        parts += [gap, panel]
    return np.concatenate(parts, axis=1)


def _column(rows: list) -> np.ndarray:
    gap = np.ones((GAP, rows[0].shape[1], 3))
    parts = [rows[0]]
    for row in rows[1:]:
        parts += [gap, row]
    return np.concatenate(parts, axis=0)


def maps_strip(image, logit_maps: torch.Tensor, scale: int = 2) -> np.ndarray:
    """(H, W, 3) picture: the image, then one column per map with its softmax weights on top
    (scaled to each map's peak) and its logits below (from each map's minimum to its maximum).

    image: (3, H_img, W_img) in [0, 1]; logit_maps: (L, h, w).
    """
    picture = image_hwc(image)
    size = tuple(s * scale for s in picture.shape[:2])
    big = picture.repeat(scale, axis=0).repeat(scale, axis=1)
    weights = logit_maps.flatten(-2).softmax(dim=-1).reshape(logit_maps.shape)
    peaks = weights / weights.amax(dim=(-2, -1), keepdim=True)
    top = _row([big] + [_colour(m.numpy(), size) for m in peaks])
    bottom = _row([np.ones_like(big)] + [_colour(m.numpy(), size) for m in rescaled(logit_maps)])
    return _column([top, bottom])


def epoch_explorer(history, scale: int = 2, classes=None) -> StaticChoice:
    """One picture per (image, snapshot) of a `map_history.MapHistory`: its latents' weights (top
    row) and logits (bottom row) after that many epochs. Captions give the run's numbers then."""
    images = history.images.float() / 255
    logits = history.logits                                            # (S, B, L, h, w)
    names = [f"#{i}" + ("" if classes is None else f" ({classes[int(y)]})")
             for i, y in zip(history.image_ids, history.labels)]
    epochs = [f"epoch {e}" for e in history.epochs]
    pictures, captions, alts = [], [], []
    latents = ", ".join(str(n) for n in history.latents)
    for b, name in enumerate(names):
        pictures.append([compact_png(maps_strip(images[b], logits[s, b], scale))
                         for s in range(len(epochs))])
        captions.append([
            f"after {history.images_seen[s]:,} training images: test accuracy "
            f"{history.test_acc[s]:.1%}; median spread {history.median_spread[s]:.1f} cells, "
            f"median peak {history.median_peak[s]:.3f}, logits' axis share "
            f"{history.median_lattice_axis[s]:.0%} (high frequencies "
            f"{history.median_lattice_high[s]:.0%})" for s in range(len(epochs))])
        alts.append([f"Test image {name} followed by two rows of {len(history.latents)} maps, "
                     f"latents {latents} after {history.epochs[s]} epochs of training: softmax "
                     f"weights on top, pre-softmax logits below." for s in range(len(epochs))])
    return static_choice(
        pictures, [Control("image", names, "dropdown", "260px"),
                   Control("epoch", epochs, "slider", "420px")],
        captions, header="top: softmax weights; bottom: logits (each map on its own scale)",
        css_class=EPOCH_EXPLORER_CLASS, alts=alts)


def pixel_picture(image, weights: torch.Tensor, pixel, grid, scale: int = 4) -> np.ndarray:
    """(H, W, 3): the image with a cyan cross at `pixel`, the N latents' shares of that pixel's
    cell as a square grid (bright = more, scaled to the largest), and the map of the latent with
    the largest share over the image. weights: (N, M) for one image and head."""
    image_size = image.shape[-2:]
    row, col = grid_cell(pixel, image_size, grid)
    shares = weights[:, row * grid[1] + col]                          # (N,)
    side = int(round(len(shares) ** 0.5))
    if side * side != len(shares):
        raise ValueError(f"{len(shares)} latents do not make a square grid")
    top = int(shares.argmax())
    panels = attention_panels(image, weights[top].reshape(grid), scale, pixel=pixel,
                              panels=("image", "overlay"))
    height = panels.shape[0]
    board = shares.reshape(side, side) / shares.max().clamp_min(1e-12)
    cell = height // side
    board_rgb = _colour(board.numpy(), (side * cell, side * cell))
    pad = np.ones((height - side * cell, side * cell, 3))
    return _row([panels, np.concatenate([board_rgb, pad], axis=0)])


def pixel_explorer(record: AttentionRecord, pixels, labels=None, classes=None, image_ids=None,
                   cross_attend: int = 0, head: int = 0, scale: int = 3,
                   which=None) -> StaticChoice:
    """One picture per (image, pixel): see `pixel_picture`. pixels: (y, x) image coordinates.

    which: the indices of the record's images to offer (default all); labels and image_ids, when
    given, are indexed like the record.
    """
    weights = record.cross[cross_attend][:, head]                      # (B, N, M)
    classes = list(classes) if classes is not None else None
    image_ids = list(image_ids) if image_ids is not None else list(range(len(weights)))
    which = list(range(len(weights))) if which is None else [int(b) for b in which]
    names = {b: f"#{image_ids[b]}" + ("" if labels is None or classes is None
                                      else f" ({classes[int(labels[b])]})") for b in which}
    pixel_names = [f"(y {y}, x {x})" for y, x in pixels]
    flat = weights.shape[1] / weights.shape[-1]
    pictures, captions, alts = [], [], []
    for b in which:
        name = names[b]
        pictures.append([compact_png(pixel_picture(record.images[b], weights[b], p, record.grid,
                                                   scale)) for p in pixels])
        row = []
        for p in pixels:
            r, c = grid_cell(p, record.images.shape[-2:], record.grid)
            shares = weights[b, :, r * record.grid[1] + c]
            top = int(shares.argmax())
            row.append(f"all latents together: {shares.sum():.3f} units of attention here "
                       f"(flat: {flat:.3f}); most from latent {top} ({shares[top]:.3f})")
        captions.append(row)
        alts.append([f"Test image {name} with a cross at pixel {q}, the image in grey with the "
                     f"map of the latent that reads that pixel most, and a square grid of all "
                     f"latents, bright where a latent reads the pixel." for q in pixel_names])
    return static_choice(
        pictures, [Control("image", [names[b] for b in which], "dropdown", "260px"),
                   Control("pixel", pixel_names, "slider", "420px")],
        captions, header="image and pixel | the top latent's map over the image | every latent's "
                         "share of the pixel (row-major, latent 0 top left)",
        css_class=PIXEL_EXPLORER_CLASS, alts=alts)

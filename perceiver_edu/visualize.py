"""Every figure of the book, drawn with matplotlib in one style.

All helpers take tensors or arrays, return the matplotlib Figure (so notebooks show it and tests
can inspect it) and never call plt.show(). Images are (3, H, W) floats in [0, 1]; attention maps
are (h, w) and are upsampled to the image by nearest neighbour (a patch's weight covers its pixels).
"""
from __future__ import annotations

import io
import math
from contextlib import contextmanager

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

ATTENTION_CMAP = "magma"     # attention weights: dark = ignored, bright = attended
SIGNED_CMAP = "RdBu_r"       # signed values: position-encoding bands, logits
CORRECT, WRONG = "#1a7f37", "#cf222e"
STYLE = {
    "figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "axes.titlesize": 9,
    "axes.labelsize": 9, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": False, "image.interpolation": "nearest", "figure.autolayout": False,
}


@contextmanager
def book_style():
    with plt.rc_context(STYLE):
        yield


def _numpy(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


def image_hwc(image) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) for imshow, clipped."""
    array = _numpy(image)
    return np.clip(array.transpose(1, 2, 0) if array.shape[0] in (1, 3) else array, 0.0, 1.0)


def upsample_map(attention_map, size) -> np.ndarray:
    """(h, w) -> (H, W) by repeating each cell; H and W must be multiples of h and w."""
    array = _numpy(attention_map)
    (h, w), (height, width) = array.shape, size
    if height % h or width % w:
        raise ValueError(f"cannot upsample a {h}x{w} map to {height}x{width}: sizes must be multiples")
    return array.repeat(height // h, axis=0).repeat(width // w, axis=1)


def _hide_ticks(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def show_heatmaps(matrices, xlabel: str = "", ylabel: str = "", titles=None, row_labels=None,
                  cell_size: float = 1.6, cmap: str = ATTENTION_CMAP, shared_scale: bool = True,
                  colorbar: bool = True):
    """A grid of heatmaps, after d2l's `show_heatmaps`: matrices (rows, cols, h, w).

    shared_scale: one colour scale for all (compare magnitudes) or one per map (compare shapes).
    """
    values = _numpy(matrices)
    if values.ndim != 4:
        raise ValueError(f"matrices must be (rows, cols, h, w), got shape {values.shape}")
    rows, cols = values.shape[:2]
    vmin, vmax = (values.min(), values.max()) if shared_scale else (None, None)
    with book_style():
        fig, axes = plt.subplots(rows, cols, figsize=(cell_size * cols + (0.6 if colorbar else 0),
                                                      cell_size * rows + 0.3), squeeze=False,
                                 layout="constrained")
        for r in range(rows):
            for c in range(cols):
                ax = axes[r, c]
                image = ax.imshow(values[r, c], cmap=cmap, vmin=vmin, vmax=vmax)
                _hide_ticks(ax)
                if titles is not None and r == 0:
                    ax.set_title(titles[c])
                if row_labels is not None and c == 0:
                    ax.set_ylabel(row_labels[r])
                elif c == 0 and ylabel:
                    ax.set_ylabel(ylabel)
                if r == rows - 1 and xlabel:
                    ax.set_xlabel(xlabel)
        if colorbar and shared_scale:
            fig.colorbar(image, ax=axes, shrink=0.8)
    return fig


def overlay_rgb(image, attention_map, alpha: float = 0.85) -> np.ndarray:
    """(H, W, 3): the image in grey, tinted by the map where the map is high.

    The map is scaled to its own maximum; a cell's tint opacity is alpha * (weight / max weight), so
    ignored regions show the plain image and the attended ones glow in the attention colours.
    """
    picture = image_hwc(image)
    heat = upsample_map(attention_map, picture.shape[:2])
    heat = heat / max(float(heat.max()), 1e-12)
    colored = matplotlib.colormaps[ATTENTION_CMAP](heat)[..., :3]
    opacity = alpha * heat[..., None]
    return (1 - opacity) * picture.mean(axis=-1, keepdims=True) + opacity * colored


def show_overlay(image, attention_map, ax=None, alpha: float = 0.85, title: str | None = None):
    """The image with one attention map laid over it (see `overlay_rgb`)."""
    with book_style():
        fig = ax.figure if ax is not None else plt.figure(figsize=(2.2, 2.2))
        ax = ax or fig.add_subplot()
        ax.imshow(np.clip(overlay_rgb(image, attention_map, alpha), 0, 1))
        _hide_ticks(ax)
        if title:
            ax.set_title(title)
    return fig


def show_overlays(images, maps, titles=None, ncols: int = 8, alpha: float = 0.85, cell_size: float = 1.5):
    """Several overlays in a grid: images (K, 3, H, W) (or one image for all), maps (K, h, w)."""
    maps = _numpy(maps)
    count = len(maps)
    nrows = math.ceil(count / ncols)
    with book_style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(cell_size * ncols, cell_size * nrows + 0.2),
                                 squeeze=False, layout="constrained")
        for i, ax in enumerate(axes.flat):
            if i >= count:
                ax.axis("off")
                continue
            image = images if _numpy(images).ndim == 3 else images[i]
            show_overlay(image, maps[i], ax=ax, alpha=alpha, title=None if titles is None else titles[i])
    return fig


def show_pixel_latents(image, weights_at_pixel, pixel, top: int = 5):
    """Which latents look at this pixel: the image with the pixel marked, and every latent's weight there.

    weights_at_pixel: (N,) — for each latent, the share of its attention on the pixel's grid cell.
    """
    weights = _numpy(weights_at_pixel)
    leaders = np.argsort(-weights, kind="stable")[:top]
    with book_style():
        fig, (left, right) = plt.subplots(1, 2, figsize=(7.0, 2.4), gridspec_kw={"width_ratios": [1, 3]})
        left.imshow(image_hwc(image))
        left.plot(pixel[1], pixel[0], marker="+", color="cyan", markersize=14, markeredgewidth=2)
        left.set_title(f"pixel (y={pixel[0]}, x={pixel[1]})")
        _hide_ticks(left)
        colors = ["#999999"] * len(weights)
        for n in leaders:
            colors[n] = "#d1495b"
        right.bar(np.arange(len(weights)), weights, color=colors, width=0.85)
        right.set_xlabel("latent index n")
        right.set_ylabel("attention on this cell")
        right.set_title("top: " + ", ".join(f"n={n} ({weights[n]:.3f})" for n in leaders[:3]))
        right.set_xlim(-1, len(weights))
        fig.tight_layout()
    return fig


def show_position_bands(features, grid, channels, titles=None, cell_size: float = 1.4):
    """Selected channels of the position features (M, C), each drawn as an image over the grid."""
    values = _numpy(features)
    maps = values[:, list(channels)].T.reshape(1, len(channels), *grid)
    titles = titles if titles is not None else [f"channel {c}" for c in channels]
    return show_heatmaps(maps, titles=titles, cmap=SIGNED_CMAP, cell_size=cell_size)


def plot_history(history, keys=None):
    """Training curves from a list of per-epoch dicts: losses on the left, accuracies on the right.

    Any key ending in `loss` or `acc` is drawn (e.g. train_loss, test_loss, train_acc, test_acc);
    the x axis is `epoch` when present, else 1, 2, 3...
    """
    if not history:
        raise ValueError("history is empty: train at least one epoch first")
    keys = keys or [k for k in history[0] if k.endswith(("loss", "acc", "accuracy"))]
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    with book_style():
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(7.0, 2.6))
        for key in keys:
            ax = loss_ax if key.endswith("loss") else acc_ax
            points = [(e, row[key]) for e, row in zip(epochs, history) if row.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=key)
        for ax, label in ((loss_ax, "loss"), (acc_ax, "accuracy")):
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            if ax.lines:
                ax.legend(frameon=False)
        fig.tight_layout()
    return fig


def show_predictions(images, labels, probabilities, classes, ncols: int = 8, cell_size: float = 1.3):
    """Images titled with the predicted class and its probability; green when right, red when wrong."""
    probs = _numpy(probabilities)
    labels = _numpy(labels).astype(int)
    nrows = math.ceil(len(probs) / ncols)
    with book_style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(cell_size * ncols, (cell_size + 0.35) * nrows),
                                 squeeze=False, layout="constrained")
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i >= len(probs):
                continue
            guess = int(probs[i].argmax())
            ax.imshow(image_hwc(images[i]))
            ax.set_title(f"{classes[guess]} {probs[i, guess]:.0%}\n(true: {classes[labels[i]]})",
                         color=CORRECT if guess == labels[i] else WRONG, fontsize=7)
    return fig


def plot_confusion_matrix(matrix, classes, normalize: bool = True):
    """A confusion matrix (rows: true class, columns: prediction), as row fractions when normalize.

    matrix: (classes, classes) counts, e.g. from `perceiver_edu.train.confusion_matrix`.
    """
    counts = _numpy(matrix)
    shown = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    with book_style():
        fig, ax = plt.subplots(figsize=(4.6, 4.0))
        image = ax.imshow(shown, cmap="Blues", vmin=0)
        ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for (r, c), value in np.ndenumerate(shown):
            ax.text(c, r, f"{value:.2f}" if normalize else str(int(value)), ha="center", va="center",
                    fontsize=6, color="white" if value > 0.6 * shown.max() else "black")
        fig.colorbar(image, ax=ax, shrink=0.8)
        fig.tight_layout()
    return fig


def figure_to_png(fig, dpi: int = 100, close: bool = True) -> bytes:
    """PNG bytes of a figure (for ipywidgets.Image), closing it unless told otherwise."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    if close:
        plt.close(fig)
    return buffer.getvalue()


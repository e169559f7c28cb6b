"""Chapter 7's static pictures (perceiver_edu.map_explorer): the softmax/logit switch, the epoch
explorer over a map history, the reverse (pixel -> latents) view."""
import dataclasses

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from perceiver_edu import Perceiver, PerceiverConfig  # noqa: E402
from perceiver_edu.attention_maps import collect_attention  # noqa: E402
from perceiver_edu.explorer import STATIC_EXPLORER_CLASS  # noqa: E402
from perceiver_edu.map_explorer import (EPOCH_EXPLORER_CLASS, PIXEL_EXPLORER_CLASS, VIEWS,  # noqa: E402
                                        compact_png, epoch_explorer, maps_strip, pixel_explorer, pixel_picture,
                                        rescaled, softmax_switch_explorer)
from perceiver_edu.map_history import MapHistory  # noqa: E402

CLASSES = [f"class{i}" for i in range(10)]
IPYWIDGETS_8 = int(widgets.__version__.split(".")[0]) >= 8


def png_size(png: bytes) -> tuple:
    import io
    return Image.open(io.BytesIO(png)).size


@pytest.fixture(scope="module")
def record():
    torch.manual_seed(0)
    model = Perceiver(PerceiverConfig.preset("cpu")).eval()
    images = torch.rand(3, 3, 32, 32)
    return collect_attention(model, images, include_logits=True)


def test_compact_png_is_smaller_and_close_to_the_picture():
    from perceiver_edu.explorer import _png, attention_panels

    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 32, 32, generator=generator)
    picture = attention_panels(image, torch.rand(16, 16, generator=generator), scale=3)
    png = compact_png(picture)
    assert len(png) < len(_png(picture))
    decoded = np.asarray(Image.open(__import__("io").BytesIO(png)).convert("RGB")) / 255
    assert decoded.shape == picture.shape
    assert np.abs(decoded - picture).mean() < 0.04  # random colours: the worst case


def test_rescaled_maps_span_zero_to_one_and_a_flat_map_is_zero():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    out = rescaled(maps)
    assert torch.allclose(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))


def test_softmax_switch_has_image_latent_and_view_and_the_views_differ(record):
    choice = softmax_switch_explorer(record, [0, 5], labels=[1, 2, 3], classes=CLASSES,
                                     image_ids=[10, 11, 12])
    assert [spec.name for spec in choice.specs] == ["image", "latent", "view"]
    assert list(choice.specs[2].labels) == list(VIEWS)
    assert len(choice.png_sizes) == 3 * 2 * 2
    assert STATIC_EXPLORER_CLASS in choice.widget._dom_classes
    weights, logits = choice.picture(1, 1, 0), choice.picture(1, 1, 1)
    assert weights != logits
    assert png_size(weights) == png_size(logits) == (3 * 32 * 3 + 2 * 2, 32 * 3)
    assert "softmax attention map" in choice.alt(1, 1, 0) and "#11" in choice.alt(1, 1, 0)
    assert "pre-softmax logits" in choice.alt(1, 1, 1)
    if IPYWIDGETS_8:
        caption = choice.page(0, 0, 1).children[1].value
        assert "logits" in caption and "white noise: 12%" in caption, caption
        assert isinstance(choice.controls[2], widgets.ToggleButtons)


def test_softmax_switch_needs_the_logits(record):
    without = dataclasses.replace(record, cross_logits=[])
    with pytest.raises(ValueError, match="include_logits=True"):
        softmax_switch_explorer(without, [0])


def test_maps_strip_puts_weights_over_logits_per_latent():
    logits = torch.zeros(3, 16, 16)
    logits[1, 4, 7] = 5.0                    # one sharp peak: after the softmax it dominates
    strip = maps_strip(torch.rand(3, 32, 32), logits, scale=1)
    assert strip.shape == (2 * 32 + 2, 4 * 32 + 3 * 2, 3)
    assert strip.min() >= 0 and strip.max() <= 1
    # a flat map is one colour in both rows; the peaked one is not
    flat_top, peaked_top = strip[:32, 34:66], strip[:32, 68:100]
    assert np.ptp(flat_top.reshape(-1, 3), axis=0).max() == 0
    assert np.ptp(peaked_top.reshape(-1, 3), axis=0).max() > 0.5


def fake_history(snapshots=3, images=2, latents=4) -> MapHistory:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(snapshots, images, latents, 16, 16, generator=generator)
    return MapHistory(
        logits=logits, images=torch.randint(0, 255, (images, 3, 32, 32), dtype=torch.uint8),
        image_ids=list(range(100, 100 + images)), labels=list(range(images)),
        latents=list(range(latents)), grid=(16, 16), epochs=list(range(snapshots)),
        images_seen=[1000 * s for s in range(snapshots)], test_acc=[0.1 * s for s in range(snapshots)],
        median_spread=[200.0 - s for s in range(snapshots)], median_peak=[0.01] * snapshots,
        median_lattice_axis=[0.9] * snapshots, median_lattice_high=[0.4] * snapshots, meta={})


def test_epoch_explorer_one_picture_per_image_and_snapshot():
    history = fake_history()
    choice = epoch_explorer(history, classes=CLASSES)
    assert [spec.name for spec in choice.specs] == ["image", "epoch"]
    assert list(choice.specs[1].labels) == ["epoch 0", "epoch 1", "epoch 2"]
    assert len(choice.png_sizes) == 2 * 3
    assert EPOCH_EXPLORER_CLASS in choice.widget._dom_classes
    assert choice.picture(0, 0) != choice.picture(0, 2)
    assert "after 2 epochs" in choice.alt(1, 2) and "#101 (class1)" in choice.alt(1, 2)
    if IPYWIDGETS_8:
        assert "2,000 training images" in choice.page(0, 2).children[1].value


def test_pixel_picture_marks_the_latents_that_read_the_pixel():
    weights = torch.full((4, 16 * 16), 1e-4)
    weights[2, 3 * 16 + 5] = 1.0             # latent 2 reads cell (3, 5): pixel (7, 10) with 2x2 patches
    weights = weights / weights.sum(-1, keepdim=True)
    picture = pixel_picture(torch.rand(3, 32, 32), weights, (7, 10), (16, 16), scale=1)
    assert picture.shape == (32, 2 * 32 + 2 * 2 + 32, 3)
    board = picture[:, -32:]
    brightest = np.unravel_index(board.sum(-1).argmax(), board.shape[:2])
    assert (brightest[0] // 16, brightest[1] // 16) == (1, 0)   # latent 2 of a 2 x 2 board


def test_pixel_explorer_captions_sum_the_column(record):
    choice = pixel_explorer(record, [(0, 0), (20, 16)], labels=[1, 2, 3], classes=CLASSES)
    assert len(choice.png_sizes) == 3 * 2
    assert PIXEL_EXPLORER_CLASS in choice.widget._dom_classes
    assert "(y 20, x 16)" in choice.alt(2, 1)
    if IPYWIDGETS_8:
        column = record.cross[0][1, 0, :, 10 * 16 + 8].sum()
        assert f"{column:.3f} units" in choice.page(1, 1).children[1].value


def test_pixel_explorer_offers_the_chosen_images(record):
    choice = pixel_explorer(record, [(20, 16)], labels=[1, 2, 3], classes=CLASSES,
                            image_ids=[10, 11, 12], which=[2, 0])
    assert list(choice.specs[0].labels) == ["#12 (class3)", "#10 (class1)"]
    assert choice.picture(0, 0) == pixel_explorer(record, [(20, 16)], which=[2]).picture(0, 0)

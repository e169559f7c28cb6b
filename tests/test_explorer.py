"""The live explorer's callbacks (driven from Python), the static explorer's payload, the shipped checkpoint."""
import dataclasses
import sys

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from ipywidgets.embed import embed_data  # noqa: E402

from perceiver_edu import Perceiver, PerceiverConfig  # noqa: E402
from perceiver_edu.assets import (PRETRAINED, ChecksumError, export_weights, load_pretrained,  # noqa: E402
                                  sha256_of, verified_path)
from perceiver_edu.attention_maps import collect_attention  # noqa: E402
from perceiver_edu.explorer import AttentionExplorer, attention_png, static_explorer  # noqa: E402

CLASSES = [f"class{i}" for i in range(10)]


def smooth_images(count: int) -> torch.Tensor:
    """Photo-like test images: smooth gradients with a bright square, uint8 (count, 3, 32, 32)."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    out = []
    for i in range(count):
        image = torch.stack([ys * (i + 1) / count, xs, 1 - ys * xs])
        image[:, 4 + 2 * i:12 + 2 * i, 8:16] = torch.tensor([0.9, 0.8, 0.1])[:, None, None]
        out.append(image)
    return (torch.stack(out) * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def two_head_model():
    """Two heads and two cross-attends, so the head and cross-attend controls have something to switch."""
    torch.manual_seed(0)
    config = dataclasses.replace(PerceiverConfig.preset("cpu"), cross_heads=2, num_cross_attends=2,
                                 weight_sharing="none")
    return Perceiver(config).eval()


def test_live_explorer_callbacks_change_the_image(two_head_model):
    labels = torch.tensor([0, 3, 5, 3, 7, 1])
    explorer = AttentionExplorer(two_head_model, smooth_images(6), labels, CLASSES)
    maps, reverse = bytes(explorer.maps_view.value), bytes(explorer.reverse_view.value)
    assert maps.startswith(b"\x89PNG") and reverse.startswith(b"\x89PNG")

    def changed(control, value):
        nonlocal maps, reverse
        before_maps, before_reverse = maps, reverse
        control.value = value
        maps, reverse = bytes(explorer.maps_view.value), bytes(explorer.reverse_view.value)
        return maps != before_maps, reverse != before_reverse

    assert changed(explorer.latent, 7) == (True, False)
    assert changed(explorer.head, 1) == (True, True)
    assert changed(explorer.cross_attend, 1) == (True, True)
    assert changed(explorer.index, 2) == (True, True)
    assert changed(explorer.pixel_x, 3) == (False, True)      # one-latent view ignores the pixel
    assert changed(explorer.mode, "top") == (True, False)
    assert "Top latents near the pixel" in explorer.info.value and explorer.info.value.split("cells): ")[1].count("(") == 4
    assert changed(explorer.pixel_y, 2) == (True, True)       # top-k view follows the pixel
    assert changed(explorer.k, 2)[0]
    assert "true <b>class5</b>" in explorer.info.value
    explorer.class_picker.value = 3                           # next image of class 3 after #2
    assert explorer.index.value == 3
    explorer.class_picker.value = 3                           # again: the next one, wrapping around
    assert explorer.index.value == 1 and explorer.class_picker.value == -1
    explorer.class_picker.value = 7
    assert explorer.index.value == 4
    assert "live" in explorer._repr_mimebundle_()["text/plain"]


def test_live_explorer_single_head_disables_controls():
    torch.manual_seed(0)
    model = Perceiver(PerceiverConfig.preset("cpu")).eval()
    explorer = AttentionExplorer(model, smooth_images(2).float() / 255)  # floats work too, labels optional
    assert explorer.head.disabled and explorer.cross_attend.disabled and explorer.class_picker.disabled
    before = explorer.maps_view.value
    explorer.latent.value = 63
    assert explorer.maps_view.value != before


def test_static_explorer_is_small_and_linked(two_head_model):
    images = smooth_images(6)
    record = collect_attention(two_head_model, images.float() / 255)
    latents = [0, 5, 9, 20, 33, 47, 58, 63]
    explorer = static_explorer(record, latents, labels=[0, 1, 2, 3, 4, 5], classes=CLASSES,
                               image_ids=[10, 11, 12, 13, 14, 15], cross_attend=1, head=1)
    assert len(explorer.png_sizes) == 6 * 8
    assert max(explorer.png_sizes) < 8_000, explorer.png_sizes  # a few KB each
    assert len(explorer.image_picker.options) == 6 and explorer.image_picker.options[0].startswith("#10: class0")
    # the links are what make it work without a kernel: dropdown -> outer stack, slider -> every inner stack
    pairs = {(link.source[0].model_id, link.source[1], link.target[0].model_id, link.target[1])
             for link in explorer.links}
    assert (explorer.image_picker.model_id, "index", explorer.outer.model_id, "selected_index") in pairs
    for stack in explorer.inner:
        assert (explorer.latent_picker.model_id, "index", stack.model_id, "selected_index") in pairs
        assert isinstance(stack, widgets.Stack) and len(stack.children) == 8
    # the page embeds the state of everything reachable, links included, in well under a few MB
    state = embed_data(views=[explorer.widget])["manager_state"]["state"]
    assert sum(1 for m in state.values() if m["model_name"] == "LinkModel") == 1 + 6
    assert len(str(state)) < 1_000_000
    # the stored image is the one the pair (image, latent) asks for
    shown = bytes(explorer.outer.children[4].children[3].children[0].value)
    assert shown == attention_png(record.images[4], record.maps(1)[4, 1, latents[3]], 3)


def test_checkpoint_export_round_trip_and_checksum(tmp_path):
    torch.manual_seed(0)
    config = PerceiverConfig.preset("cpu")
    model = Perceiver(config)
    trainer_checkpoint = tmp_path / "last.pt"
    torch.save({"format": 1, "model": model.state_dict(), "optimizer": {}, "model_config": config.to_dict(),
                "train_config": {"seed": 0}, "history": [{"epoch": 1, "test_acc": 0.1}],
                "data_source": "synthetic"}, trainer_checkpoint)
    shipped = tmp_path / "small.pt"
    digest = export_weights(trainer_checkpoint, shipped)
    assert digest == sha256_of(shipped)
    loaded, info = load_pretrained(path=shipped, expected_sha256=digest)
    assert info["history"] == [{"epoch": 1, "test_acc": 0.1}] and info["sha256"] == digest
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.half().float()), name

    damaged = tmp_path / "damaged.pt"
    data = bytearray(shipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=rf"expected {digest}[\s\S]*python -m perceiver_edu.train"):
        load_pretrained(path=damaged, expected_sha256=digest)
    with pytest.raises(FileNotFoundError, match="re-create it"):
        load_pretrained(path=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown pretrained"):
        load_pretrained("imagenet")


def test_the_shipped_checkpoint_matches_its_recorded_sha256():
    path = verified_path("cpu-cifar10")
    assert path.stat().st_size < 2_000_000
    model, info = load_pretrained("cpu-cifar10")
    assert model.config.name == "cpu" and info["history"][-1]["test_acc"] > 0.4
    assert PRETRAINED["cpu-cifar10"]["command"].startswith("python -m perceiver_edu.train")


def test_colab_widget_manager_is_enabled_only_in_colab(monkeypatch):
    from types import ModuleType

    from perceiver_edu.explorer import enable_colab_widgets

    assert enable_colab_widgets() is False  # not in Colab: nothing to do
    calls = []
    colab, output = ModuleType("google.colab"), ModuleType("google.colab.output")
    output.enable_custom_widget_manager = lambda: calls.append("enabled")
    colab.output = output
    google = ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.output", output)
    assert enable_colab_widgets() is True and calls == ["enabled"]

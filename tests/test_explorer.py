"""The live explorer's callbacks (driven from Python), static choices and the static explorer, the
shipped checkpoint. Runs under ipywidgets 8 (.venv) and 7.7.1 (.venv-colab, by tests/test_colab_env.py):
on 7 a static choice has no Stack and must fall back to tabs, as designed.
"""
import dataclasses
import json

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from ipywidgets.embed import dependency_state, embed_data  # noqa: E402

from perceiver_edu import Perceiver, PerceiverConfig  # noqa: E402
from perceiver_edu.assets import (PRETRAINED, ChecksumError, export_weights, load_pretrained,  # noqa: E402
                                  sha256_of, verified_path)
from perceiver_edu.attention_maps import collect_attention  # noqa: E402
from perceiver_edu.explorer import (AttentionExplorer, Control, attention_png, picture_html,  # noqa: E402
                                    static_choice, static_explorer)

CLASSES = [f"class{i}" for i in range(10)]
IPYWIDGETS_8 = int(widgets.__version__.split(".")[0]) >= 8


def link_pairs(links) -> set:
    return {(link.source[0].model_id, link.source[1], link.target[0].model_id, link.target[1]) for link in links}


def solid_png(value: float, size: int = 4) -> bytes:
    """A distinct tiny PNG per value (grey level)."""
    from perceiver_edu.explorer import _png
    return _png(np.full((size, size, 3), value))


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
    bundle = explorer._repr_mimebundle_()
    assert "live" in bundle["text/plain"]
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id


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
    assert explorer._repr_mimebundle_()["text/plain"].startswith("StaticExplorer: 6 images x 8 latents, ")
    assert len(explorer.inner) == 6 and all(len(stack.children) == 8 for stack in explorer.inner)
    # the stored image is the one the pair (image, latent) asks for
    shown = explorer.choice.picture(4, 3)
    assert shown == attention_png(record.images[4], record.maps(1)[4, 1, latents[3]], 3)
    # ... and the page shows exactly those bytes, in an <img> whose alt text names the image and latent
    img = explorer.outer.children[4].children[3].children[0].value
    assert img == picture_html(shown, explorer.choice.alt(4, 3))
    assert 'alt="Three panels: test image #14 (class4), latent 20' in img
    state = dependency_state([explorer.widget], drop_defaults=True)
    assert len(json.dumps(state)) < 1_000_000  # the page embeds all of it: well under a few MB
    if not IPYWIDGETS_8:  # no Stack: tabs titled by the options, no pickers, and a note that says so
        assert explorer.image_picker is None and explorer.links == []
        assert isinstance(explorer.outer, widgets.Tab) and explorer.outer.get_title(0).startswith("#10: class0")
        assert "has no Stack widget" in explorer.widget.children[0].value
        return
    assert len(explorer.image_picker.options) == 6 and explorer.image_picker.options[0].startswith("#10: class0")
    # the links are what make it work without a kernel: dropdown -> outer stack, slider -> every inner stack
    pairs = link_pairs(explorer.links)
    assert (explorer.image_picker.model_id, "index", explorer.outer.model_id, "selected_index") in pairs
    for stack in explorer.inner:
        assert (explorer.latent_picker.model_id, "index", stack.model_id, "selected_index") in pairs
        assert isinstance(stack, widgets.Stack)
    state = embed_data(views=[explorer.widget])["manager_state"]["state"]
    assert sum(1 for m in state.values() if m["model_name"] == "LinkModel") == 1 + 6


def test_static_choice_one_control_from_figures_and_arrays():
    import matplotlib.pyplot as plt

    figures = []
    for k in range(3):
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.plot([0, 1], [0, k])
        figures.append(fig)
    choice = static_choice({"K=2": figures[0], "K=4": figures[1], "K=8": figures[2]},
                           [Control("bands", ["K=2", "K=4", "K=8"], "toggle")])
    assert not plt.get_fignums()  # the figures were closed once rendered
    pictures = [choice.picture(i) for i in range(3)]
    assert all(p.startswith(b"\x89PNG") for p in pictures) and len(set(pictures)) == 3
    assert choice.describe().startswith("StaticChoice: 3 bands, ")
    ramp = static_choice([np.zeros((2, 2, 3)), np.ones((2, 2, 3))], [("level", ["dark", "light"])])
    assert ramp.picture(1) != ramp.picture(0) and ramp.png_sizes == [len(ramp.picture(0)), len(ramp.picture(1))]
    if IPYWIDGETS_8:
        assert isinstance(choice.controls[0], widgets.ToggleButtons) and choice.controls[0].options == ("K=2", "K=4", "K=8")
        assert isinstance(ramp.controls[0], widgets.Dropdown)  # the default for the first control
        assert link_pairs(choice.links) == {(choice.controls[0].model_id, "index", choice.root.model_id, "selected_index")}
    else:
        assert choice.controls == [] and [choice.root.get_title(i) for i in range(3)] == ["K=2", "K=4", "K=8"]


def test_static_choice_three_controls_links_every_stack_of_each_depth():
    levels = [("K", ["4", "8"]), ("mu", ["16", "32", "64"]), ("view", ["bands", "kernel"], "toggle")]
    pictures = [[[solid_png((i * 6 + j * 2 + k) / 12) for k in range(2)] for j in range(3)] for i in range(2)]
    captions = [[[f"K={i} mu={j} view={k}" for k in range(2)] for j in range(3)] for i in range(2)]
    choice = static_choice(pictures, levels, captions, header="<b>pick</b>", css_class="my-figure")
    assert len(choice.png_sizes) == 12 and len(set(choice.png_sizes)) >= 1
    assert [len(level) for level in choice.stacks] == [1, 2, 6]
    for i in range(2):
        for j in range(3):
            for k in range(2):
                assert choice.picture(i, j, k) == pictures[i][j][k]
                assert f"K={i} mu={j} view={k}" in choice.page(i, j, k).children[1].value
    assert {"perceiver-static-choice", "my-figure"} <= set(choice.widget._dom_classes)
    # one Layout object for all the small widgets: the page state stays small
    layouts = {id(w.layout) for level in choice.stacks for w in level}
    layouts |= {id(choice.page(i, j, k).children[0].layout) for i in range(2) for j in range(3) for k in range(2)}
    assert len(layouts) == 1
    if IPYWIDGETS_8:
        kinds = [type(c) for c in choice.controls]
        assert kinds == [widgets.Dropdown, widgets.SelectionSlider, widgets.ToggleButtons]
        expected = {(control.model_id, "index", stack.model_id, "selected_index")
                    for control, level in zip(choice.controls, choice.stacks) for stack in level}
        assert link_pairs(choice.links) == expected and len(choice.links) == 1 + 2 + 6
        assert all(isinstance(stack, widgets.Stack) for level in choice.stacks for stack in level)
    else:  # ipywidgets 7: nested tabs, each page names its whole choice, a note says why
        assert all(isinstance(tab, widgets.Tab) for level in choice.stacks for tab in level)
        assert choice.stacks[1][1].get_title(2) == "64" and choice.links == []
        assert "K: 8; mu: 64; view: kernel" in choice.page(1, 2, 1).children[1].value
        assert "no Stack widget" in choice.widget.children[0].value and "(tabs: ipywidgets 7)" in choice.describe()


def test_every_static_picture_is_an_img_with_its_alt_text():
    """An ipywidgets.Image renders as <img> with no alt attribute: screen readers get nothing."""
    import base64
    import re

    pictures = [[solid_png(0.1), solid_png(0.2)], [solid_png(0.3), solid_png(0.4)]]
    alts = [["dark grey square", "darker grey square"], ["mid grey square", 'a "quoted" <grey> square']]
    choice = static_choice(pictures, [("row", ["a", "b"]), ("col", ["x", "y"])], alts=alts)
    for i in range(2):
        for j in range(2):
            value = choice.page(i, j).children[0].value
            found = re.fullmatch(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)" [^>]*>', value)
            assert found, value
            assert base64.b64decode(found.group(1)) == pictures[i][j] == choice.picture(i, j)
            assert found.group(2) == html_escape(alts[i][j]) and choice.alt(i, j) == alts[i][j]
    default = static_choice([solid_png(0.5)], [("latent", ["latent 6"])])
    assert default.alt(0) == "Precomputed picture for latent latent 6." and 'alt="Precomputed' in \
        default.page(0).children[0].value
    with pytest.raises(ValueError, match="needs an alt text"):
        static_choice([solid_png(0.5)], [("x", ["a"])], alts=["  "])
    with pytest.raises(ValueError, match=r"alts has 1 entries, but control 'x' has 2 labels"):
        static_choice([solid_png(0.5), solid_png(0.6)], [("x", ["a", "b"])], alts=["one"])


def html_escape(text: str) -> str:
    import html
    return html.escape(text, quote=True)


def test_static_choice_rejects_bad_input_with_clear_errors():
    png = solid_png(0.5)
    with pytest.raises(ValueError, match=r"pictures\['a'\] has 1 entries, but control 'y' has 2 labels"):
        static_choice({"a": [png], "b": [png, png]}, [("x", ["a", "b"]), ("y", ["1", "2"])])
    with pytest.raises(KeyError, match="has no entry for x 'b'"):
        static_choice({"a": png}, [("x", ["a", "b"])])
    with pytest.raises(ValueError, match="must be a PNG"):
        static_choice([b"GIF89a"], [("x", ["a"])])
    with pytest.raises(ValueError, match="distinct labels"):
        static_choice([png, png], [("x", ["a", "a"])])
    with pytest.raises(ValueError, match="1 to 3 controls"):
        static_choice(png, [])
    with pytest.raises(ValueError, match="kind must be one of"):
        static_choice([png], [("x", ["a"], "knob")])


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


# The generic helper in a browser: no kernel, no network, all three kinds of control ---------------
SHOWN_IMAGE_JS = """(previous) => {
    const shown = Array.from(document.querySelectorAll('#choice img')).filter((img) => {
        const box = img.getBoundingClientRect();
        return box.width > 0 && box.height > 0;
    });
    if (shown.length !== 1 || !shown[0].complete || shown[0].src === previous) return null;
    return shown[0].src;
}"""
SHA256_JS = """async (url) => {
    const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
    const hash = await crypto.subtle.digest('SHA-256', bytes);
    return Array.from(new Uint8Array(hash)).map(b => b.toString(16).padStart(2, '0')).join('');
}"""


@pytest.mark.skipif(not IPYWIDGETS_8, reason="ipywidgets 7 has no Stack: its tabs need no links to test")
def test_static_choice_switches_pictures_in_a_browser_with_no_kernel(tmp_path):
    """A page holding only the embedded widget state and the vendored HTML manager (as the book's
    pages do): the dropdown, the slider and the toggle buttons each switch to the right picture."""
    import functools
    import hashlib
    import http.server
    import os
    import shutil
    import threading
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    vendor = Path(os.environ.get("PERCEIVER_EDU_VENDOR") or root / ".vendor") / "static" / "offline"
    chromium = os.environ.get("PERCEIVER_EDU_CHROMIUM", "/usr/bin/chromium")
    if not (vendor / "html-manager" / "embed-amd.js").is_file() or not Path(chromium).is_file():
        pytest.fail(f"needs the vendored JavaScript ({vendor}: `make vendor`) and Chromium ({chromium}); "
                    f"make test sets up both")
    from playwright.sync_api import sync_playwright

    pictures = [[[solid_png((i * 6 + j * 2 + k) / 12) for k in range(2)] for j in range(3)] for i in range(2)]
    choice = static_choice(pictures, [("K", ["4", "8"]), ("mu", ["16", "32", "64"]),
                                      ("view", ["bands", "kernel"], "toggle")])
    data = embed_data(views=[choice.widget], state=dependency_state([choice.widget], drop_defaults=True))
    shutil.copytree(vendor, tmp_path / "offline")
    (tmp_path / "index.html").write_text(
        '<!doctype html><html><head><script src="offline/require.js"></script>'
        '<script src="offline/html-manager/embed-setup.js"></script>'
        '<script src="offline/html-manager/embed-amd.js"></script>'
        f'<script type="application/vnd.jupyter.widget-state+json">{json.dumps(data["manager_state"])}</script>'
        '</head><body><div id="choice"><script type="application/vnd.jupyter.widget-view+json">'
        f'{json.dumps(data["view_specs"][0])}</script></div></body></html>')

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    outside, errors = [], []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                                 args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                    else outside.append(r.url))
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
            shown = {"src": None}

            def picture_now():  # waits until one new picture is shown and decoded, then its bytes' hash
                handle = page.wait_for_function(SHOWN_IMAGE_JS, arg=shown["src"], timeout=60_000, polling=100)
                shown["src"] = handle.json_value()
                return page.evaluate(SHA256_JS, shown["src"])

            def expected(i, j, k):
                return hashlib.sha256(pictures[i][j][k]).hexdigest()

            assert picture_now() == expected(0, 0, 0)
            page.locator("#choice select").select_option(index=1)
            assert picture_now() == expected(1, 0, 0)
            page.locator("#choice .noUi-handle").focus()
            page.keyboard.press("End")
            assert picture_now() == expected(1, 2, 0)
            page.get_by_role("button", name="kernel").click()
            assert picture_now() == expected(1, 2, 1)
            page.locator("#choice select").select_option(index=0)  # the other choices stay as they were
            assert picture_now() == expected(0, 2, 1)
            alts = page.evaluate("Array.from(document.querySelectorAll('#choice img')).map((img) => img.alt)")
            assert alts and all(alt.startswith("Precomputed picture for K ") for alt in alts), alts
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert not errors and not outside, (errors, outside)

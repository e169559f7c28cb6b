"""The chapters' static explorers in the built page, in headless Chromium: no kernel, no network.

Chapter 7's attention, epoch and pixel explorers, chapter 1's Fourier-band explorer and chapter 2's
scaling explorer.
Each test builds a one-page Jupyter Book in a temporary folder (the project's _config.yml and
Sphinx extension, the chapter as stored in the working tree, the glossary, a stand-in notation page
and the references, the vendored JavaScript from .vendor), serves it on 127.0.0.1 and drives it
with Playwright and Debian's Chromium (no browser download).

Needs: the vendored JS (`make vendor`), Chromium at $PERCEIVER_EDU_CHROMIUM or /usr/bin/chromium
(`apt-get install -y chromium`; `make test` installs both).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "notebooks" / "07_attention_maps.ipynb"
FOURIER_CHAPTER = ROOT / "notebooks" / "01_fourier_features.ipynb"
CHROMIUM = os.environ.get("PERCEIVER_EDU_CHROMIUM", "/usr/bin/chromium")
VENDOR = Path(os.environ.get("PERCEIVER_EDU_VENDOR") or ROOT / ".vendor")
EXPLORER = ".perceiver-static-explorer"
FOURIER_EXPLORER = ".perceiver-fourier-explorer"
# book/notation.md links to every chapter; a one-chapter book gets this stand-in with its label
NOTATION_STUB = "(notation)=\n# Notation\n\nStand-in for book/notation.md in a one-chapter test book.\n"
LOCAL_SCHEMES = ("data", "blob", "about")


def build_chapter_site(tmp_path_factory, chapter: Path) -> Path:
    """Build a one-page book of `chapter` (plus glossary, notation stand-in, references); its HTML root."""
    if not (VENDOR / "static" / ".complete").is_file():
        pytest.fail(f"the offline JavaScript is not in {VENDOR}: run `make vendor` "
                    f"(or `python tools/vendor_assets.py`) first")
    source = tmp_path_factory.mktemp(f"{chapter.stem}-book")
    shutil.copy(ROOT / "_config.yml", source)
    shutil.copytree(ROOT / "tools", source / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "book", source / "book")  # references.bib (named by _config.yml), glossary.md
    (source / "book" / "notation.md").write_text(NOTATION_STUB)
    (source / "notebooks").mkdir()
    shutil.copy(chapter, source / "notebooks")
    # the chapter cites papers and links glossary terms and the notation page, so those pages come along
    (source / "_toc.yml").write_text(f"format: jb-book\nroot: notebooks/{chapter.stem}\nchapters:\n"
                                     "  - file: book/glossary\n  - file: book/notation\n"
                                     "  - file: book/references\n")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(source), "--all", "-W", "-n", "--keep-going"],
        env={**os.environ, "PERCEIVER_EDU_VENDOR": str(VENDOR), "NO_COLOR": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    page = source / "_build" / "html" / "notebooks" / f"{chapter.stem}.html"
    assert page.is_file(), sorted(p.name for p in (source / "_build" / "html").rglob("*.html"))
    return source / "_build" / "html"


@contextlib.contextmanager
def serve(directory: Path):
    """An HTTP server for `directory` on 127.0.0.1 (a free port); yields its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def chapter_site(tmp_path_factory) -> Path:
    return build_chapter_site(tmp_path_factory, CHAPTER)


@pytest.fixture(scope="module")
def server(chapter_site):
    with serve(chapter_site) as url:
        yield url


@pytest.fixture(scope="module")
def fourier_server(tmp_path_factory):
    with serve(build_chapter_site(tmp_path_factory, FOURIER_CHAPTER)) as url:
        yield url


def _is_local(url: str) -> bool:
    parts = urlparse(url)
    return parts.scheme in LOCAL_SCHEMES or parts.hostname == "127.0.0.1"


# Generous: a loaded 2-core machine may take seconds to lay out the page or decode a PNG.
WAIT_MS = 60_000

# The src of the one image the explorer shows, once exactly one is visible and decoded and it is
# not `previous`; null otherwise. While a Stack switches pages there can be a moment with no
# visible image (or still the old one), so callers wait on this condition instead of asserting.
SETTLED_IMAGE_JS = """([selector, previous]) => {
    const root = document.querySelector(selector);
    if (!root) return null;
    const shown = Array.from(root.querySelectorAll('img')).filter((img) => {
        const box = img.getBoundingClientRect();
        return box.width > 0 && box.height > 0 && getComputedStyle(img).visibility !== 'hidden';
    });
    if (shown.length !== 1) return null;
    const img = shown[0];
    if (!img.complete || img.naturalWidth === 0 || img.src === previous) return null;
    return img.src;
}"""

SHA256_OF_URL_JS = """async (url) => {
    const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
    const hash = await crypto.subtle.digest('SHA-256', bytes);
    return Array.from(new Uint8Array(hash)).map(b => b.toString(16).padStart(2, '0')).join('');
}"""


def _shown_image(page, previous: str | None = None, what: str = "image",
                 selector: str = EXPLORER) -> tuple[str, str]:
    """(src, sha256 of the bytes) of the one decoded image the explorer shows, once it is not `previous`."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        handle = page.wait_for_function(SETTLED_IMAGE_JS, arg=[selector, previous],
                                        timeout=WAIT_MS, polling=100)
    except PlaywrightTimeout:
        state = page.evaluate("""(selector) => Array.from(document.querySelector(selector).querySelectorAll('img'))
            .map((img) => [img.getBoundingClientRect().width, img.complete, img.naturalWidth])""", selector)
        pytest.fail(f"choosing another {what}: no single new decoded image within {WAIT_MS} ms "
                    f"(images: [width, complete, naturalWidth] = {state})")
    src = handle.json_value()
    return src, page.evaluate(SHA256_OF_URL_JS, src)


def test_static_explorer_switches_images_with_no_kernel_and_no_network(server, tmp_path):
    with offline_page(f"{server}/notebooks/07_attention_maps.html") as page:

        explorer = page.locator(EXPLORER)
        explorer.wait_for(state="visible", timeout=60_000)
        assert explorer.count() == 1
        explorer.scroll_into_view_if_needed()
        first = _shown_image(page)

        select = explorer.locator("select")
        options = select.locator("option")
        assert options.count() >= 2
        select.select_option(index=options.count() - 1)
        second = _shown_image(page, first[0], "image")
        assert second[1] != first[1], "another image shows the same bytes"

        handle = explorer.locator(".noUi-handle")
        handle.focus()
        page.keyboard.press("ArrowRight")
        third = _shown_image(page, second[0], "latent")
        assert third[1] != second[1], "another latent shows the same bytes"

        select.select_option(index=0)
        back = _shown_image(page, third[0], "image")
        assert back[1] != first[1], "the latent slider should still apply after switching images"

        shot = tmp_path / "chapter7_explorer.png"
        explorer.screenshot(path=str(shot))
        page.screenshot(path=str(tmp_path / "chapter7_page.png"), full_page=False)
        keep = os.environ.get("PERCEIVER_EDU_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / shot.name)
            shutil.copy(tmp_path / "chapter7_page.png", Path(keep) / "chapter7_page.png")

    assert hashlib.sha256(shot.read_bytes()).hexdigest()  # the screenshot was written


# The text of the one visible caption under the explorer's picture, once it contains `wanted` and
# is not `previous`.
CAPTION_JS = """([selector, wanted, previous]) => {
    const root = document.querySelector(selector);
    if (!root) return null;
    const shown = Array.from(root.querySelectorAll('.widget-html-content')).filter((node) => {
        const box = node.getBoundingClientRect();
        return box.width > 0 && box.height > 0 && node.textContent.includes(wanted);
    });
    if (shown.length !== 1 || shown[0].textContent === previous) return null;
    return shown[0].textContent;
}"""


def _caption(page, selector: str, wanted: str, previous: str | None = None) -> str:
    """Wait until the visible caption of the explorer at `selector` contains `wanted` (and is not
    `previous`); return its text."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        return page.wait_for_function(CAPTION_JS, arg=[selector, wanted, previous], timeout=WAIT_MS,
                                      polling=100).json_value()
    except PlaywrightTimeout:
        texts = page.evaluate("""(selector) => Array.from(document.querySelector(selector)
            .querySelectorAll('.widget-html-content')).filter((n) => n.getBoundingClientRect().width > 0)
            .map((n) => n.textContent)""", selector)
        pytest.fail(f"no visible caption with {wanted!r} within {WAIT_MS} ms; visible: {texts}")


def _the_explorer(page, selector: str):
    """The page's one explorer at `selector`, once visible, scrolled into view."""
    explorer = page.locator(selector)
    explorer.wait_for(state="visible", timeout=WAIT_MS)
    assert explorer.count() == 1
    explorer.scroll_into_view_if_needed()
    return explorer


def test_fourier_explorer_switches_pictures_with_no_kernel_and_no_network(fourier_server, tmp_path):
    """Chapter 1: the K buttons and the mu slider switch the precomputed band pictures in the page."""
    with offline_page(f"{fourier_server}/notebooks/01_fourier_features.html") as page:
        explorer = _the_explorer(page, FOURIER_EXPLORER)
        first = _shown_image(page, what="picture", selector=FOURIER_EXPLORER)
        assert "0 above the limit" in _caption(page, FOURIER_EXPLORER, "K = 2, \u03bc = 8:")

        # K: toggle buttons; the last one is K = 16
        buttons = explorer.locator("button")
        assert buttons.count() == 4
        buttons.nth(3).click()
        second = _shown_image(page, first[0], "K", FOURIER_EXPLORER)
        assert second[1] != first[1], "another K shows the same bytes"
        assert "16 different bands" in _caption(page, FOURIER_EXPLORER, "K = 16, \u03bc = 8:")

        # mu: the slider, moved with the keyboard from 8 to 32 (8, 16, 24, 31, 32)
        handle = explorer.locator(".noUi-handle")
        handle.focus()
        for _ in range(4):
            page.keyboard.press("ArrowRight")
        caption = _caption(page, FOURIER_EXPLORER, "K = 16, \u03bc = 32:")
        assert "1 above the limit 15.5" in caption and "15 different bands" in caption, caption
        third = _shown_image(page, second[0], "mu", FOURIER_EXPLORER)
        assert third[1] not in (first[1], second[1]), "another mu shows the same bytes"

        shot = tmp_path / "chapter1_explorer.png"
        explorer.screenshot(path=str(shot))
        keep = os.environ.get("PERCEIVER_EDU_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / shot.name)


ATTENTION_CHAPTER = ROOT / "notebooks" / "02_attention.ipynb"
SCALING_EXPLORER = ".perceiver-scaling-explorer"


@pytest.fixture(scope="module")
def attention_server(tmp_path_factory):
    with serve(build_chapter_site(tmp_path_factory, ATTENTION_CHAPTER)) as url:
        yield url


@contextlib.contextmanager
def offline_page(url: str):
    """A Chromium page at `url` that may load nothing outside 127.0.0.1; yields the page.

    On leaving: fails if the page asked for anything outside 127.0.0.1 or raised a JavaScript error.
    """
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: `apt-get install -y chromium`, or set "
                    f"PERCEIVER_EDU_CHROMIUM (make test installs it)")
    from playwright.sync_api import sync_playwright

    requests, errors = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = browser.new_context(viewport={"width": 1280, "height": 1000})

        def route(route_):
            requests.append(route_.request.url)
            return route_.continue_() if _is_local(route_.request.url) else route_.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.on("request", lambda request: requests.append(request.url))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url, wait_until="load")
        try:
            yield page
        finally:
            browser.close()

    assert requests, "no requests were recorded"
    outside = sorted({seen for seen in requests if not _is_local(seen)})
    assert not outside, f"the page asked for resources outside 127.0.0.1: {outside}"
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_attention_scaling_explorer_switches_pictures_with_no_kernel_and_no_network(
        attention_server, tmp_path):
    """Chapter 2: the scaled/unscaled buttons and the d slider switch the precomputed weight bars."""
    with offline_page(f"{attention_server}/notebooks/02_attention.html") as page:
        explorer = _the_explorer(page, SCALING_EXPLORER)
        first = _shown_image(page, what="picture", selector=SCALING_EXPLORER)
        assert "largest weight 0.14" in _caption(page, SCALING_EXPLORER, "d = 4, scaled:")

        # scores: toggle buttons, scaled then unscaled
        buttons = explorer.locator("button")
        assert buttons.count() == 2
        buttons.nth(1).click()
        second = _shown_image(page, first[0], "scores", SCALING_EXPLORER)
        assert second[1] != first[1], "unscaled shows the same bytes as scaled"
        assert "largest weight 0.28" in _caption(page, SCALING_EXPLORER, "d = 4, unscaled:")

        # d: the slider, moved with the keyboard from 4 to 256 (4, 16, 64, 256)
        explorer.locator(".noUi-handle").focus()
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        caption = _caption(page, SCALING_EXPLORER, "d = 256, unscaled:")
        assert "largest weight 1.00" in caption and "entropy 0.00 nats" in caption, caption
        third = _shown_image(page, second[0], "d", SCALING_EXPLORER)
        assert third[1] not in (first[1], second[1]), "another d shows the same bytes"

        buttons.nth(0).click()
        assert "largest weight 0.23" in _caption(page, SCALING_EXPLORER, "d = 256, scaled:")
        fourth = _shown_image(page, third[0], "scores", SCALING_EXPLORER)
        assert fourth[1] not in (first[1], second[1], third[1]), "d = 256 scaled repeats a picture"

        shot = tmp_path / "chapter2_explorer.png"
        explorer.screenshot(path=str(shot))
        keep = os.environ.get("PERCEIVER_EDU_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / shot.name)
    assert shot.stat().st_size > 0


def test_chapter7_softmax_toggle_epoch_slider_and_pixel_view_work_with_no_kernel(server, tmp_path):
    """Chapter 7's other static controls: the weights/logits toggle, the epoch explorer (captions
    read back from the stored map history) and the pixel -> latents view."""
    from perceiver_edu.map_explorer import EPOCH_EXPLORER_CLASS, PIXEL_EXPLORER_CLASS
    from perceiver_edu.map_history import DEFAULT_OUT, load_map_history

    history = load_map_history(ROOT / DEFAULT_OUT)
    epochs, pixels = f".{EPOCH_EXPLORER_CLASS}", f".{PIXEL_EXPLORER_CLASS}"
    with offline_page(f"{server}/notebooks/07_attention_maps.html") as page:
        # the weights / logits toggle of the first explorer
        switch = _the_explorer(page, EXPLORER)
        weights = _shown_image(page, what="picture")
        buttons = switch.locator("button")
        assert buttons.count() == 2
        buttons.nth(1).click()
        logits = _shown_image(page, weights[0], "view (before softmax)")
        assert logits[1] != weights[1], "the logits show the same bytes as the weights"

        # the epoch slider: from the first snapshot to the last, the captions the run recorded
        explorer = _the_explorer(page, epochs)
        first = _shown_image(page, what="picture", selector=epochs)
        start = f"after {history.images_seen[0]:,} training images: test accuracy {history.test_acc[0]:.1%}"
        _caption(page, epochs, start)
        explorer.locator(".noUi-handle").focus()
        for _ in range(len(history.epochs) - 1):
            page.keyboard.press("ArrowRight")
        end = f"after {history.images_seen[-1]:,} training images: test accuracy {history.test_acc[-1]:.1%}"
        _caption(page, epochs, end)
        last = _shown_image(page, first[0], "epoch", epochs)
        assert last[1] != first[1], "the last epoch shows the same bytes as the first"

        # the reverse view: another pixel, then another image
        explorer = _the_explorer(page, pixels)
        first = _shown_image(page, what="picture", selector=pixels)
        first_caption = _caption(page, pixels, "units of attention here")
        explorer.locator(".noUi-handle").focus()
        page.keyboard.press("ArrowRight")
        moved = _shown_image(page, first[0], "pixel", pixels)
        assert moved[1] != first[1], "another pixel shows the same bytes"
        _caption(page, pixels, "units of attention here", previous=first_caption)
        select = explorer.locator("select")
        select.select_option(index=select.locator("option").count() - 1)
        other = _shown_image(page, moved[0], "image", pixels)
        assert other[1] not in (first[1], moved[1]), "another image shows the same bytes"

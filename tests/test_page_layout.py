"""The page a reader reads (issue 15): at 1280x900 no code or output block scrolls sideways.

Every page of the book (the documents in _toc.yml) is opened in headless Chromium (Playwright with
Debian's Chromium, no browser download; the set-up of tests/test_browser.py) with a 1280x900 window.
Once the page has loaded, its fonts are ready, MathJax has typeset it and the ipywidgets manager has
rendered its widgets, every <details> (hidden cells, exercise solutions) is opened, and every <pre>
in the article is measured on the element that scrolls it (the <pre>, or its nearest ancestor with
overflow-x auto/scroll): it overflows when scrollWidth > clientWidth + 1.

Which build: `.ci/run` runs `make book` before `make test`, so _build/html is used when each page's
HTML is newer than every source the book is built from. Otherwise the book is built into a temporary
folder first (`jupyter-book build --path-output`, about a minute; run `make book` to skip that).

Chapters still in NOT_YET_CONVERTED (tests/test_notebook_style.py) are measured and reported but do
not fail the test; the chapter editors empty that list.

As a script, it measures and prints every page (converted or not), e.g. for before/after counts:
    .venv/bin/python tests/test_page_layout.py [BUILD_DIR] [--width 1280] [--height 900]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_notebook_style import NOT_YET_CONVERTED  # noqa: E402  the one list of unconverted chapters
from toc import documents, resolve  # noqa: E402  tools/toc.py

BUILD = ROOT / "_build" / "html"
CHROMIUM = os.environ.get("PERCEIVER_EDU_CHROMIUM", "/usr/bin/chromium")
VENDOR = Path(os.environ.get("PERCEIVER_EDU_VENDOR") or ROOT / ".vendor")
WIDTH, HEIGHT = 1280, 900
# Generous: a loaded 2-core machine may take long to load MathJax or render the widgets.
WAIT_MS = 120_000
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# Everything the built HTML depends on, besides the pages named in _toc.yml.
BUILD_INPUTS = ["_config.yml", "_toc.yml", "book", "tools/sphinx_offline_assets.py"]

# True once the page is ready to be measured: fonts loaded, MathJax (where the page loads it)
# finished its first typesetting, and every ipywidgets view rendered into its widget-subarea.
READY_JS = """async () => {
    await document.fonts.ready;
    if (document.querySelector('script[src*="mathjax"]')) {
        if (!(window.MathJax && window.MathJax.startup && window.MathJax.startup.promise)) return false;
        await window.MathJax.startup.promise;
    }
    const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
    for (const view of views) {
        const area = view.previousElementSibling;
        if (!area || !area.classList.contains('widget-subarea') || !area.childElementCount) return false;
    }
    return document.fonts.status === 'loaded';
}"""

# One record per <pre> in the article, after opening every <details>.
MEASURE_JS = """() => {
    document.querySelectorAll('details').forEach((d) => { d.open = true; });
    const article = document.querySelector('article') || document.querySelector('main') || document.body;
    const canvas = document.createElement('canvas').getContext('2d');
    return Array.from(article.querySelectorAll('pre')).map((pre, index) => {
        let scroller = pre;
        for (let e = pre; e && e !== article; e = e.parentElement) {
            const overflowX = getComputedStyle(e).overflowX;
            if (overflowX === 'auto' || overflowX === 'scroll') { scroller = e; break; }
        }
        const style = getComputedStyle(pre);
        canvas.font = `${style.fontStyle} ${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
        const room = scroller.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        const lines = pre.textContent.replace(/\\n$/, '').split('\\n');
        const widths = lines.map((line) => canvas.measureText(line).width);
        let first = widths.findIndex((w) => w > room + 1);
        if (first < 0) first = widths.indexOf(Math.max(...widths));
        const kind = pre.closest('.cell_output') ? 'output' : pre.closest('.cell_input') ? 'code' : 'text';
        return {
            index, kind,
            visible: scroller.clientWidth > 0,
            scrollWidth: scroller.scrollWidth, clientWidth: scroller.clientWidth,
            charsThatFit: Math.floor(room / canvas.measureText('0').width),
            lineNumber: first + 1, line: lines[first] || '',
        };
    });
}"""


@dataclass
class Block:
    page: str
    index: int
    kind: str
    scroll_width: int
    client_width: int
    chars_that_fit: int
    line_number: int
    line: str

    @property
    def overflows(self) -> bool:
        return self.scroll_width > self.client_width + 1

    def describe(self) -> str:
        return (f"{self.page} block {self.index} ({self.kind}, {self.scroll_width} px in "
                f"{self.client_width} px, {self.chars_that_fit} characters fit): line "
                f"{self.line_number} has {len(self.line)}: {self.line!r}")


def book_pages(toc: Path = ROOT / "_toc.yml") -> list[tuple[str, Path]]:
    """(HTML path relative to the site, source file) of every page in the toc, in reading order."""
    pages = []
    for doc in documents(toc):
        source = resolve(ROOT, doc)
        if source is None:
            raise FileNotFoundError(f"{toc} names {doc}, which does not exist")
        pages.append((str(Path(doc).with_suffix("")) + ".html", source))
    return pages


def _newest_source_mtime(pages: list[tuple[str, Path]]) -> tuple[float, Path]:
    files = [source for _, source in pages]
    for name in BUILD_INPUTS:
        path = ROOT / name
        files.extend(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else files.append(path)
    newest = max(files, key=lambda p: p.stat().st_mtime)
    return newest.stat().st_mtime, newest


def stale_reason(build: Path, pages: list[tuple[str, Path]]) -> str | None:
    """Why `build` does not show the current sources, or None when every page is newer than them."""
    missing = [html for html, _ in pages if not (build / html).is_file()]
    if missing:
        return f"{build} lacks {', '.join(missing)}"
    newest, newest_file = _newest_source_mtime(pages)
    oldest_html = min((build / html for html, _ in pages), key=lambda p: p.stat().st_mtime)
    if oldest_html.stat().st_mtime < newest:
        return (f"{newest_file.relative_to(ROOT)} is newer than "
                f"{oldest_html.relative_to(build.parent.parent)}")
    return None


def build_copy(output: Path) -> Path:
    """Build the book from the working tree into output/_build/html (never touching _build)."""
    if not (VENDOR / "static" / ".complete").is_file():
        pytest.fail(f"the offline JavaScript is not in {VENDOR}: run `make vendor` (or `make book`)")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(output), "--all",
         "-W", "-n", "--keep-going"],
        env={**os.environ, "PERCEIVER_EDU_VENDOR": str(VENDOR), "NO_COLOR": "1"},
        capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (f"book build failed (`make book` shows the same):\n"
                                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return output / "_build" / "html"


def measure(build: Path, pages: list[str], width: int = WIDTH, height: int = HEIGHT) -> list[Block]:
    """Every visible <pre> block of each page of `build` (file:// URLs), at width x height."""
    if not Path(CHROMIUM).is_file():
        raise FileNotFoundError(f"Chromium not found at {CHROMIUM}: `apt-get install -y chromium`, "
                                f"or set PERCEIVER_EDU_CHROMIUM (make test installs it)")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    blocks: list[Block] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            # file:// pages of a self-contained site: nothing may come from the network
            context.route("**/*", lambda route: route.continue_()
                          if route.request.url.startswith(("file:", "data:", "blob:"))
                          else route.abort())
            page = context.new_page()
            for html in pages:
                page.goto((build / html).resolve().as_uri(), wait_until="load")
                try:
                    page.wait_for_function(READY_JS, timeout=WAIT_MS, polling=200)
                except PlaywrightTimeout:
                    raise AssertionError(f"{html}: fonts, MathJax or widgets not ready within "
                                         f"{WAIT_MS} ms") from None
                for record in page.evaluate(MEASURE_JS):
                    if record["visible"]:
                        blocks.append(Block(html, record["index"], record["kind"],
                                            record["scrollWidth"], record["clientWidth"],
                                            record["charsThatFit"], record["lineNumber"],
                                            record["line"]))
        finally:
            browser.close()
    return blocks


def is_converted(source: Path) -> bool:
    return source.name not in NOT_YET_CONVERTED


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    pages = book_pages()
    reason = stale_reason(BUILD, pages)
    if reason is None:
        return BUILD
    print(f"building a copy of the book ({reason}; `make book` first saves this)")
    return build_copy(tmp_path_factory.mktemp("book"))


def test_no_code_or_output_block_scrolls_sideways_at_1280x900(built_book):
    pages = book_pages()
    blocks = measure(built_book, [html for html, _ in pages])
    assert blocks, "no <pre> blocks found: the measurement is broken"
    converted = {html for html, source in pages if is_converted(source)}
    overflowing = [b for b in blocks if b.overflows]
    failing = [b for b in overflowing if b.page in converted]
    waiting = [b for b in overflowing if b.page not in converted]
    if waiting:
        print(f"{len(waiting)} overflowing blocks in chapters still in NOT_YET_CONVERTED "
              f"(not failing): " + ", ".join(sorted({b.page for b in waiting})))
    assert not failing, (
        f"{len(failing)} of {len(blocks)} code/output blocks scroll sideways at "
        f"{WIDTH}x{HEIGHT} (fit the line to the column: `make format`, shorter printed lines):\n"
        + "\n".join(b.describe() for b in failing))


def main() -> int:
    parser = argparse.ArgumentParser(description="Count code/output blocks that scroll sideways.")
    parser.add_argument("build", nargs="?", type=Path, default=BUILD)
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--height", type=int, default=HEIGHT)
    parser.add_argument("-v", "--verbose", action="store_true", help="list each overflowing block")
    args = parser.parse_args()
    pages = book_pages()
    reason = stale_reason(args.build, pages)
    if reason:
        print(f"warning: {reason}: run `make book` for a current count", file=sys.stderr)
    blocks = measure(args.build, [html for html, _ in pages], args.width, args.height)
    print(f"window {args.width}x{args.height}, build {args.build}")
    for html, _ in pages:
        mine = [b for b in blocks if b.page == html]
        over = [b for b in mine if b.overflows]
        fit = sorted({b.chars_that_fit for b in mine if b.kind == "code"})
        print(f"  {html:40s} {len(over):4d} of {len(mine):4d} blocks scroll sideways"
              + (f"  (code blocks hold {fit} characters)" if fit else ""))
        if args.verbose:
            for b in over:
                print("      " + b.describe())
    total_over = sum(b.overflows for b in blocks)
    print(f"total: {total_over} of {len(blocks)} code/output blocks scroll sideways")
    return 0


if __name__ == "__main__":
    sys.exit(main())

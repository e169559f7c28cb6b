#!/usr/bin/env python3
"""Fail if an image in the built site has no real alt text, or a chapter image is not a figure.

Usage:  python tools/check_alt_text.py [BUILD_DIR] [--all]      (default BUILD_DIR: _build/html)

Every <img> of every page (theme templates in _static/ and _sources/ are not pages):
- its alt text may not be missing, empty, or look like a file name, a path or a hash (MyST-NB's
  default alt text is the image's own path, `../_images/<sha256>.png`);
- an image in the article (the page's own content, not the theme's navigation, launch buttons or
  logo) needs an alt text of at least MIN_ALT_WORDS words that says what it shows, and must be
  a numbered figure: inside a <figure> whose <figcaption> carries a caption number ("Figure 6.2").

A purely decorative image is allowed an empty alt when it says so: alt="" together with
role="presentation" (or "none"), aria-hidden="true" or the class "decorative" (MyST: an {image}
with `:alt: ""` and `:class: decorative`). A screen reader then skips it.

Pages of chapters listed in NOT_YET_CONVERTED (tests/test_notebook_style.py, the one list of
chapters not yet converted to issue 15's rules) are reported but do not fail; --all checks them too.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
STYLE_TEST = ROOT / "tests" / "test_notebook_style.py"
IMAGE_SUFFIX = re.compile(r"\.(png|jpe?g|gif|svg|webp|bmp|tiff?|pdf|ico)$", re.I)
HEX_RUN = re.compile(r"[0-9a-f]{16,}", re.I)
DECORATIVE_ROLES = {"presentation", "none"}


def style_constants() -> dict:
    """NOT_YET_CONVERTED and MIN_ALT_WORDS, read (not imported) from tests/test_notebook_style.py."""
    found = {}
    for node in ast.parse(STYLE_TEST.read_text(encoding="utf8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            name = getattr(node.targets[0], "id", None)
            if name in ("NOT_YET_CONVERTED", "MIN_ALT_WORDS"):
                found[name] = ast.literal_eval(node.value)
    missing = {"NOT_YET_CONVERTED", "MIN_ALT_WORDS"} - found.keys()
    if missing:
        raise SystemExit(f"check_alt_text: {STYLE_TEST} does not define {sorted(missing)}")
    return found


def alt_problem(alt: str | None, src: str) -> str | None:
    """Why `alt` is not a real alt text for the image at `src`, or None."""
    if alt is None:
        return "has no alt attribute"
    text = alt.strip()
    if not text:
        return "has an empty alt text"
    path = PurePosixPath(unquote(urlsplit(src).path))
    if text in (src, path.as_posix(), path.name, path.stem):
        return f"has its own file name as alt text ({text!r})"
    if IMAGE_SUFFIX.search(text) or (("/" in text or "\\" in text) and " " not in text):
        return f"has a file path as alt text ({text!r})"
    if HEX_RUN.search(text):
        return f"has a hash in its alt text ({text!r})"
    return None


class ImageScanner(HTMLParser):
    """Each <img>: its attributes, whether it is in the <article>, and its enclosing <figure>."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
            "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict] = []
        self.figures: list[dict] = []     # each: {"images": [...], "numbered": bool}
        self._stack: list[str] = []
        self._article_depth = 0
        self._figure_stack: list[dict] = []
        self._caption_depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        if tag == "img":
            image = {"src": a.get("src") or "", "alt": a.get("alt"), "role": a.get("role"),
                     "aria_hidden": a.get("aria-hidden"), "classes": classes,
                     "in_article": self._article_depth > 0,
                     "figure": self._figure_stack[-1] if self._figure_stack else None,
                     "line": self.getpos()[0]}
            self.images.append(image)
            if image["figure"] is not None:
                image["figure"]["images"].append(image)
            return
        if tag in self.VOID:
            return
        self._stack.append(tag)
        if tag == "article":
            self._article_depth += 1
        if tag == "figure":
            figure = {"images": [], "numbered": False, "captioned": False}
            self.figures.append(figure)
            self._figure_stack.append(figure)
        if tag == "figcaption" and self._figure_stack:
            self._figure_stack[-1]["captioned"] = True
        if "caption-number" in classes and self._figure_stack:
            self._figure_stack[-1]["numbered"] = True

    def handle_endtag(self, tag):
        if tag in self.VOID or tag not in self._stack:
            return
        while self._stack:
            open_tag = self._stack.pop()
            if open_tag == "article" and self._article_depth:
                self._article_depth -= 1
            if open_tag == "figure" and self._figure_stack:
                self._figure_stack.pop()
            if open_tag == tag:
                break


def is_decorative(image: dict) -> bool:
    return ((image["alt"] is not None and not image["alt"].strip())
            and ((image["role"] or "").lower() in DECORATIVE_ROLES
                 or (image["aria_hidden"] or "").lower() == "true"
                 or "decorative" in image["classes"]))


def page_problems(html: str, min_words: int) -> tuple[int, list[str]]:
    """(number of images, one line per image that fails, saying why) for one page's HTML."""
    scanner = ImageScanner()
    scanner.feed(html)
    problems = []
    for image in scanner.images:
        if is_decorative(image):
            continue
        why = []
        problem = alt_problem(image["alt"], image["src"])
        if problem:
            why.append(problem)
        elif image["in_article"] and len(image["alt"].split()) < min_words:
            why.append(f"has a {len(image['alt'].split())}-word alt text ({image['alt']!r}): "
                       f"say in one or two sentences what it shows")
        if image["in_article"]:
            figure = image["figure"]
            if figure is None:
                why.append("is not a figure: give it a caption and a name "
                           "(how: tests/test_notebook_style.py)")
            elif not (figure["captioned"] and figure["numbered"]):
                why.append("is in a figure without a numbered caption")
        if why:
            problems.append(f"line {image['line']}: <img src={image['src']!r}> " + "; ".join(why))
    return len(scanner.images), problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", nargs="?", default=ROOT / "_build" / "html", type=Path)
    parser.add_argument("--all", action="store_true",
                        help="also fail on chapters listed in NOT_YET_CONVERTED")
    args = parser.parse_args()
    build: Path = args.build_dir
    if not build.is_dir():
        print(f"check_alt_text: {build} does not exist; build the book first (make book)",
              file=sys.stderr)
        return 2
    constants = style_constants()
    waiting = {Path(name).stem for name in constants["NOT_YET_CONVERTED"]}

    pages = sorted(p for p in build.rglob("*.html")
                   if p.relative_to(build).parts[0] not in ("_static", "_sources"))
    failing, deferred, images = {}, {}, 0
    for page in pages:
        count, problems = page_problems(page.read_text(encoding="utf8", errors="replace"),
                                        constants["MIN_ALT_WORDS"])
        images += count
        if problems:
            rel = page.relative_to(build).as_posix()
            (deferred if page.stem in waiting and not args.all else failing)[rel] = problems

    if deferred:
        n = sum(map(len, deferred.values()))
        print(f"check_alt_text: {n} image(s) fail in {len(deferred)} page(s) of chapters not "
              f"yet converted (NOT_YET_CONVERTED in tests/test_notebook_style.py; --all shows "
              f"them): " + ", ".join(sorted(deferred)))
    if failing:
        n = sum(map(len, failing.values()))
        print(f"check_alt_text: {n} of {images} images lack a real alt text or a numbered "
              f"figure caption:",
              file=sys.stderr)
        for rel, problems in sorted(failing.items()):
            for problem in problems:
                print(f"  {rel} {problem}", file=sys.stderr)
        return 1
    print(f"check_alt_text: {images} images in {len(pages)} pages checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())

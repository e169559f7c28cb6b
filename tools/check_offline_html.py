#!/usr/bin/env python3
"""Fail if the built site would load anything from a host other than itself.

Usage:  python tools/check_offline_html.py [BUILD_DIR] [--site-host HOST ...]
        (default BUILD_DIR: _build/html)

Checks every HTML page for resources a browser fetches on its own: <script src>, <link href> that
loads something (stylesheet, preload, icon, preconnect, ...), <iframe>/<frame>/<embed>/<object>,
images, media and srcset, CSS url()/@import in <style> blocks and style="" attributes; every .css
file in the build for url()/@import; and inline <script> blocks for known CDN hosts (a loader that
would fetch from them later, e.g. Thebe's). Plain <a href> links are fine: a reader clicks them.

Local references of scripts and stylesheets must exist in the build (a missing vendored file would
otherwise fail silently in the reader's browser).
"""
from __future__ import annotations

import argparse
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
NON_LOADING_RELS = {"canonical", "alternate", "next", "prev", "search", "index", "author",
                    "license", "help", "bookmark", "nofollow", "noopener", "noreferrer", "me",
                    "external", "tag"}
CDN_HOSTS = ("unpkg.com", "cdn.jsdelivr.net", "cdnjs.cloudflare.com", "ajax.googleapis.com",
             "fonts.googleapis.com", "fonts.gstatic.com", "code.jquery.com", "mybinder.org",
             "cdn.plot.ly", "polyfill.io", "googletagmanager.com", "plausible.io",
             "hypothes.is", "utteranc.es")
CSS_URL = re.compile(r"""url\(\s*(['"]?)([^'")]+)\1\s*\)|@import\s+(['"])([^'"]+)\3""")
CSS_COMMENT = re.compile(r"/\*.*?\*/", re.S)


def is_external(url: str, site_hosts: set[str]) -> bool:
    url = url.strip()
    if url.startswith("//"):
        url = "http:" + url
    parts = urlsplit(url)
    if parts.scheme in ("", "data", "blob", "about", "javascript", "mailto"):
        return False
    return parts.hostname not in site_hosts


def css_urls(text: str) -> list[str]:
    found = []
    for m in CSS_URL.finditer(CSS_COMMENT.sub("", text)):
        found.append(m.group(2) or m.group(4))
    return found


class PageScanner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.loads: list[tuple[str, str]] = []        # (what, url) fetched by the browser
        self.must_exist: list[tuple[str, str]] = []   # local scripts and stylesheets
        self.inline_scripts: list[str] = []
        self._in: str | None = None
        self._buffer: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        src = a.get("src", "")
        if tag == "script":
            if src:
                self.loads.append(("script", src))
                self.must_exist.append(("script", src))
            else:
                self._in, self._buffer = "script", []
        elif tag == "link" and a.get("href"):
            rels = set(a.get("rel", "").lower().split())
            if rels and rels <= NON_LOADING_RELS:
                return
            self.loads.append((f"link rel={a.get('rel', '')}", a["href"]))
            if "stylesheet" in rels:
                self.must_exist.append(("stylesheet", a["href"]))
        elif tag in ("iframe", "frame", "embed", "img", "source", "audio", "video", "track",
                     "input") and src:
            self.loads.append((tag, src))
        if tag == "object" and a.get("data"):
            self.loads.append(("object", a["data"]))
        if tag == "video" and a.get("poster"):
            self.loads.append(("video poster", a["poster"]))
        if a.get("srcset"):
            for candidate in a["srcset"].split(","):
                if candidate.strip():
                    self.loads.append((f"{tag} srcset", candidate.split()[0]))
        if a.get("style"):
            self.loads.extend(("style attribute", u) for u in css_urls(a["style"]))
        if tag == "style":
            self._in, self._buffer = "style", []

    def handle_data(self, data):
        if self._in:
            self._buffer.append(data)

    def handle_endtag(self, tag):
        if self._in and tag == self._in:
            text = "".join(self._buffer)
            if tag == "style":
                self.loads.extend(("<style>", u) for u in css_urls(text))
            else:
                self.inline_scripts.append(text)
            self._in = None


def local_target(page: Path, url: str) -> Path:
    path = unquote(urlsplit(url).path)
    return (page.parent / path).resolve()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", nargs="?", default="_build/html", type=Path)
    parser.add_argument("--site-host", action="append", default=[],
                        help="host name the site is published on (allowed)")
    args = parser.parse_args()
    build: Path = args.build_dir
    if not build.is_dir():
        print(f"check_offline_html: {build} does not exist; build the book first", file=sys.stderr)
        return 2
    site_hosts = LOCAL_HOSTS | set(args.site_host)

    problems: list[str] = []
    # _static/*.html are theme templates (Jinja macros) copied verbatim, not pages.
    pages = sorted(p for p in build.rglob("*.html")
                   if p.relative_to(build).parts[0] not in ("_static", "_sources"))
    for page in pages:
        scanner = PageScanner()
        scanner.feed(page.read_text(encoding="utf8", errors="replace"))
        rel = page.relative_to(build)
        for what, url in scanner.loads:
            if is_external(url, site_hosts):
                problems.append(f"{rel}: {what} loads {url}")
        for what, url in scanner.must_exist:
            if not is_external(url, site_hosts) and not url.startswith(("data:", "blob:")):
                if not local_target(page, url).is_file():
                    problems.append(f"{rel}: {what} {url} is missing from the build")
        for body in scanner.inline_scripts:
            for host in CDN_HOSTS:
                if host in body:
                    problems.append(f"{rel}: inline script mentions {host}")

    stylesheets = sorted(build.rglob("*.css"))
    for css in stylesheets:
        for url in css_urls(css.read_text(encoding="utf8", errors="replace")):
            if is_external(url, site_hosts):
                problems.append(f"{css.relative_to(build)}: CSS loads {url}")

    if problems:
        print(f"check_offline_html: {len(problems)} reference(s) to other hosts or missing files:",
              file=sys.stderr)
        for p in sorted(set(problems)):
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"check_offline_html: {len(pages)} pages and {len(stylesheets)} stylesheets load "
          f"nothing from other hosts")
    return 0


if __name__ == "__main__":
    sys.exit(main())

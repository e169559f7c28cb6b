"""Sphinx extension: serve the vendored require.js, ipywidgets manager and MathJax from the site.

Loaded from _config.yml (sphinx.local_extensions). The files themselves are fetched from npm by
tools/vendor_assets.py into .vendor/static/offline/; _config.yml points mathjax_path and
nb_ipywidgets_js at `offline/...`, which Sphinx resolves under _static/.

The folder is added to html_static_path here, at config-inited, rather than in _config.yml:
Jupyter Book 1 adds *every* .js/.css file below html_static_path to every page when the book
has a root `_static/` folder, which would put a hundred MathJax components on each page.
"""
from __future__ import annotations

import os
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ConfigError

ENV_VAR = "PERCEIVER_EDU_VENDOR"  # optional override of the .vendor folder


def _vendor_static(app: Sphinx) -> Path:
    root = Path(os.environ.get(ENV_VAR) or Path(app.srcdir) / ".vendor")
    return (root / "static").resolve()


def _add_static_path(app: Sphinx, config) -> None:
    static = _vendor_static(app)
    required = [static / "offline" / name for name in (
        "require.js", "html-manager/embed-amd.js", "html-manager/embed-setup.js",
        "mathjax/tex-chtml.js")]
    missing = [str(p) for p in required if not p.is_file()]
    if missing:
        raise ConfigError(
            "offline assets are missing (" + ", ".join(missing) + ").\n"
            "Run `make vendor` (or `python tools/vendor_assets.py`) to fetch them from npm; "
            "`make book` does this for you.")
    config.html_static_path = [*config.html_static_path, str(static)]


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _add_static_path)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

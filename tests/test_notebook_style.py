"""The chapters' rules for the page a reader reads (issue 15), checked on the notebooks' JSON.

- Every code line is at most 77 characters (a code cell's width in the book at 1280 px).
- `ruff check` and `ruff format --check` pass (notebooks/ruff.toml: line length 77).
- The chapter's title carries no number: _toc.yml numbers the chapters ("# Training on CIFAR-10"
  is shown as "6. Training on CIFAR-10"), and from them the figures ("Figure 6.2").
- Every code cell that stores an image is a figure. Its cell metadata gives MyST-NB a caption, a
  name for `{numref}` and an alt text that says in one or two sentences what the image shows:

      "metadata": {"mystnb": {"figure": {"caption": "...", "name": "fig-training-curves"},
                              "image": {"alt": "..."}}}

  The caption is MyST: it may use {numref}, {term} and {glue:text} (a number glued earlier in the
  notebook, or earlier in the same cell). Such a cell has exactly one rich output, the image:
  MyST-NB wraps every display_data/execute_result of the cell in the figure. Figures written in
  markdown ({figure} or {glue:figure} directives) need :name:, :alt: and a caption too; a bare
  ![...](...) image has no number or caption and is not allowed.

NOT_YET_CONVERTED lists the pages that do not follow these rules yet. It is the one list that
every issue-15 check honours: this file, tests/test_page_layout.py, tools/check_alt_text.py (make
book) and `make format`. An editor removes a page from it when converting the page; at the end it
is empty.

As a script, `python tests/test_notebook_style.py --converted` prints the converted notebooks
(the Makefile's `format` target formats only those).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
MAX_LINE = 77
MIN_ALT_WORDS = 4
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif", "image/webp")
FIGURE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
NUMBERED_TITLE = re.compile(r"^#\s+\d+(\.\d+)*\.?\s")
FIGURE_DIRECTIVE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<kind>figure|glue:figure)\}[^\n]*\n"
                              r"(?P<body>.*?)^(?P=fence)\s*$", re.M | re.S)
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")

# Pages not yet converted to the rules above (file names of pages in _toc.yml).
# Editors: remove your page when it complies.
NOT_YET_CONVERTED = set()  # empty: every page is converted


def all_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def converted_notebooks() -> list[Path]:
    return [p for p in all_notebooks() if p.name not in NOT_YET_CONVERTED]


def cells(path: Path):
    """(cell number counted from 1, cell) of every cell."""
    notebook = json.loads(path.read_text(encoding="utf8"))
    return list(enumerate(notebook["cells"], start=1))


def source(cell) -> str:
    text = cell["source"]
    return "".join(text) if isinstance(text, list) else text


def long_lines(path: Path) -> list[str]:
    return [f"{path.name} cell {number} line {i}: {len(line)} characters: {line!r}"
            for number, cell in cells(path) if cell["cell_type"] == "code"
            for i, line in enumerate(source(cell).splitlines(), start=1) if len(line) > MAX_LINE]


def title_problems(path: Path) -> list[str]:
    for number, cell in cells(path):
        if cell["cell_type"] == "markdown":
            title = source(cell).lstrip().splitlines()[0] if source(cell).strip() else ""
            if NUMBERED_TITLE.match(title):
                return [f"{path.name} cell {number}: the title {title!r} carries a number; "
                        f"_toc.yml numbers the chapters, so write it without one"]
            return []
    return [f"{path.name}: no markdown cell with a title"]


def _alt_problem(alt, where: str) -> list[str]:
    if len(str(alt or "").split()) < MIN_ALT_WORDS:
        return [f"{where}: alt text {alt!r} should say in one or two sentences what the "
                f"figure shows"]
    return []


def _name_problem(name, where: str, names: dict) -> list[str]:
    if not FIGURE_NAME.match(str(name or "")):
        return [f"{where}: figure name {name!r} is not a label like 'fig-training-curves'"]
    if name in names:
        return [f"{where}: figure name {name!r} is also used by {names[name]}"]
    names[name] = where
    return []


def figure_problems(path: Path) -> list[str]:
    """What each figure of the notebook lacks (code-cell figures and markdown figures)."""
    problems, names = [], {}
    for number, cell in cells(path):
        where = f"{path.name} cell {number}"
        if cell["cell_type"] == "markdown":
            text = source(cell)
            for match in FIGURE_DIRECTIVE.finditer(text):
                options = dict(re.findall(r"^:(\w+):[ \t]*(.*)$", match["body"], re.M))
                caption = re.sub(r"^:\w+:.*$", "", match["body"], flags=re.M).strip()
                here = f"{where} ({{{match['kind']}}})"
                if not caption:
                    problems.append(f"{here}: no caption (the directive's body)")
                problems += _name_problem(options.get("name"), here, names)
                problems += _alt_problem(options.get("alt"), here)
            if MARKDOWN_IMAGE.search(FIGURE_DIRECTIVE.sub("", text)):
                problems.append(f"{where}: a markdown image ![...](...) has no number or "
                                f"caption; use a {{figure}} directive with :name: and :alt:")
            continue
        if cell["cell_type"] != "code":
            continue
        rich = [o for o in cell.get("outputs", [])
                if o.get("output_type") in ("display_data", "execute_result")]
        images = [o for o in rich if any(t in o.get("data", {}) for t in IMAGE_TYPES)]
        if not images:
            continue
        mystnb = cell.get("metadata", {}).get("mystnb", {})
        figure, image = mystnb.get("figure", {}), mystnb.get("image", {})
        if not str(figure.get("caption", "")).strip():
            problems.append(f"{where}: no metadata.mystnb.figure.caption")
        problems += _name_problem(figure.get("name"), where, names)
        problems += _alt_problem(image.get("alt"), where)
        if len(rich) > 1:
            problems.append(f"{where}: {len(rich)} rich outputs; a figure cell shows only its "
                            f"image (end the cell with plt.show() or `;`, print the rest, or "
                            f"split the cell)")
    return problems


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_the_list_names_pages_of_the_book():
    sys.path.insert(0, str(ROOT / "tools"))
    from toc import documents, resolve  # tools/toc.py

    pages = {resolve(ROOT, doc).name for doc in documents(ROOT / "_toc.yml")}
    unknown = NOT_YET_CONVERTED - pages
    assert not unknown, f"NOT_YET_CONVERTED names pages not in _toc.yml: {sorted(unknown)}"


@pytest.mark.parametrize("path", converted_notebooks(), ids=_ids(converted_notebooks()))
def test_code_lines_fit_the_column(path):
    found = long_lines(path)
    assert not found, (f"{len(found)} code lines longer than {MAX_LINE} characters "
                       f"(`make format NB={path.relative_to(ROOT)}`, then shorten what it "
                       f"cannot):\n" + "\n".join(found))


@pytest.mark.parametrize("path", converted_notebooks(), ids=_ids(converted_notebooks()))
def test_the_title_leaves_the_number_to_the_toc(path):
    found = title_problems(path)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", converted_notebooks(), ids=_ids(converted_notebooks()))
def test_every_image_is_a_named_captioned_figure_with_alt_text(path):
    found = figure_problems(path)
    assert not found, "see the docstring of tests/test_notebook_style.py:\n" + "\n".join(found)


def _ruff(*args: str) -> subprocess.CompletedProcess:
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.is_file():
        pytest.fail(f"ruff is not installed in {ruff.parent}: `make setup` (requirements.txt)")
    return subprocess.run([str(ruff), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.skipif(not converted_notebooks(), reason="no chapter converted yet")
def test_ruff_check_passes_on_converted_chapters():
    paths = [str(p.relative_to(ROOT)) for p in converted_notebooks()]
    result = _ruff("check", "--no-cache", *paths)
    assert result.returncode == 0, (f"`ruff check` (`make format` fixes some):\n"
                                    f"{result.stdout}{result.stderr}")


@pytest.mark.skipif(not converted_notebooks(), reason="no chapter converted yet")
def test_ruff_format_leaves_converted_chapters_unchanged():
    paths = [str(p.relative_to(ROOT)) for p in converted_notebooks()]
    result = _ruff("format", "--check", "--no-cache", *paths)
    assert result.returncode == 0, f"run `make format`:\n{result.stdout}{result.stderr}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--converted"]:
        sys.exit(__doc__)
    for path in converted_notebooks():
        print(path.relative_to(ROOT).as_posix())

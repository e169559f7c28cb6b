#!/usr/bin/env python3
"""One repository URL: `_config.yml`'s `repository.url`, written into every copy of it.

Usage:  python tools/repo_url.py [--check]     fail (exit 1) when a copy differs; the default
        python tools/repo_url.py --write       write every copy from _config.yml
        python tools/repo_url.py --cell [URL]  print the chapters' first cell (for URL, if given)

The copies:
- the first code cell of every notebook in notebooks/: the setup cell, rendered from SETUP_CELL
  (the same in all chapters). It installs the package from the repository when it is not
  importable, then `perceiver_edu.setup_cell.where_am_i()` says what and where;
- pyproject.toml's [project.urls] (Homepage, Repository).
Jupyter Book builds the Colab and repository buttons from _config.yml itself.

--check also accepts notebooks whose setup cell predates SETUP_CELL (an older cell with an
install line), as long as its URL agrees; once one notebook has the new cell, all must have it
exactly. `--write` changes only the setup cell's source: re-execute the notebooks afterwards
(`tools/run_notebooks.py`) so that their stored outputs come from the new cell.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# {url} is filled in; every line fits the book's 77-character code column.
SETUP_CELL = '''\
# Setup, the same in every chapter. Without the book's package (e.g. on
# Colab), pip installs it from the repository. It keeps every package that
# is already installed, so pip's note about restarting does not apply.
REPO = "{url}"
try:
    from perceiver_edu.setup_cell import seed_everything, where_am_i
except ImportError:
    %pip install -q "perceiver-edu @ git+{{REPO}}"
    from perceiver_edu.setup_cell import seed_everything, where_am_i

device = where_am_i()  # prints the package, where it came from, the device
seed_everything(0)'''
SETUP_FIRST_LINE = SETUP_CELL.splitlines()[0]
URL_PATTERN = re.compile(r"""(?:git\+)?((?:https?|file)://[^\s"'{}]+)""")
PYPROJECT_URL_KEYS = ("Homepage", "Repository")


def render_cell(url: str) -> str:
    return SETUP_CELL.format(url=url)


def config_url(root: Path = ROOT) -> str:
    """repository.url of _config.yml (read with a regex: the tool needs no YAML parser)."""
    text = (root / "_config.yml").read_text(encoding="utf-8")
    block = re.search(r"^repository:\s*\n((?:[ \t]+.*\n?|\s*\n)*)", text, re.M)
    match = block and re.search(r"^[ \t]+url:\s*[\"']?([^\s\"'#]+)", block.group(1), re.M)
    if not match:
        raise SystemExit(f"{root / '_config.yml'}: no repository.url found; it is where the URL is set")
    return match.group(1).rstrip("/")


def notebooks(root: Path = ROOT) -> list[Path]:
    return sorted((root / "notebooks").glob("*.ipynb"))


def _setup_cell(nb) -> dict | None:
    return next((cell for cell in nb["cells"] if cell["cell_type"] == "code"), None)


def _source(cell) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


# pyproject.toml ----------------------------------------------------------------------------------
def _urls_section(text: str) -> tuple[int, int]:
    start = text.index("[project.urls]")
    following = re.search(r"^\[", text[start + 1:], re.M)
    return start, (start + 1 + following.start()) if following else len(text)


def pyproject_problems(root: Path, url: str) -> list[str]:
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    if "[project.urls]" not in text:
        return ["pyproject.toml: no [project.urls] section"]
    start, end = _urls_section(text)
    problems = []
    for key in PYPROJECT_URL_KEYS:
        found = re.search(rf'^{key}\s*=\s*"([^"]*)"', text[start:end], re.M)
        if not found:
            problems.append(f"pyproject.toml: [project.urls] has no {key}")
        elif found.group(1) != url:
            problems.append(f"pyproject.toml: {key} = {found.group(1)!r}, but _config.yml says {url!r}")
    return problems


def write_pyproject(root: Path, url: str) -> bool:
    path = root / "pyproject.toml"
    text = path.read_text(encoding="utf-8")
    start, end = _urls_section(text)
    section = text[start:end]
    for key in PYPROJECT_URL_KEYS:
        line = f'{key} = "{url}"'
        pattern = re.compile(rf"^{key}\s*=.*$", re.M)
        section = pattern.sub(line, section) if pattern.search(section) else section.rstrip("\n") + f"\n{line}\n"
    new = text[:start] + section + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


# notebooks ---------------------------------------------------------------------------------------
def notebook_problems(root: Path, url: str) -> tuple[list[str], list[str]]:
    """(problems, notebooks whose setup cell predates SETUP_CELL)."""
    import nbformat

    expected, problems, old, new = render_cell(url), [], [], []
    for path in notebooks(root):
        name = path.relative_to(root).as_posix()
        cell = _setup_cell(nbformat.read(path, as_version=4))
        source = "" if cell is None else _source(cell)
        if "perceiver_edu" not in source or "%pip install" not in source:
            problems.append(f"{name}: the first code cell is not the setup cell")
            continue
        wrong = [found for found in URL_PATTERN.findall(source) if found.rstrip("/") != url]
        if wrong:
            problems.append(f"{name}: the setup cell installs from {wrong[0]!r}, but _config.yml says {url!r}")
        if source.splitlines()[0] == SETUP_FIRST_LINE:
            new.append(name)
            if source != expected and not wrong:
                problems.append(f"{name}: the setup cell differs from tools/repo_url.py's SETUP_CELL")
        else:
            old.append(name)
    if new and old:
        problems.append(f"only some chapters have the current setup cell; older ones: {', '.join(old)}")
    return problems, old


def write_notebooks(root: Path, url: str) -> list[Path]:
    import nbformat

    changed = []
    for path in notebooks(root):
        nb = nbformat.read(path, as_version=4)
        cell = _setup_cell(nb)
        if cell is None or "perceiver_edu" not in _source(cell) or "%pip install" not in _source(cell):
            raise SystemExit(f"{path}: its first code cell is not a setup cell; add one by hand first")
        if _source(cell) != render_cell(url):
            cell["source"] = render_cell(url)
            nbformat.write(nb, path)
            changed.append(path)
    return changed


# command line ------------------------------------------------------------------------------------
def check(root: Path = ROOT) -> tuple[list[str], list[str]]:
    url = config_url(root)
    problems, old = notebook_problems(root, url)
    return pyproject_problems(root, url) + problems, old


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail when a copy differs (the default)")
    mode.add_argument("--write", action="store_true", help="write every copy from _config.yml")
    mode.add_argument("--cell", nargs="?", const="", metavar="URL", help="print the setup cell")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.cell is not None:
        print(render_cell(args.cell or config_url(root)))
        return 0
    url = config_url(root)
    if args.write:
        if write_pyproject(root, url):
            print(f"wrote pyproject.toml: [project.urls] = {url}")
        changed = write_notebooks(root, url)
        for path in changed:
            print(f"wrote the setup cell of {path.relative_to(root)}")
        if changed:
            print("Re-execute them so their stored outputs come from the new cell:\n  python "
                  "tools/run_notebooks.py " + " ".join(str(p.relative_to(root)) for p in changed))
    problems, old = check(root)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"The repository URL is set in _config.yml (repository.url = {url}); "
              f"`python tools/repo_url.py --write` rewrites every copy.", file=sys.stderr)
        return 1
    pending = f"; {len(old)} notebook(s) still have the older setup cell (--write updates them)" if old else ""
    print(f"repository URL {url}: every copy agrees{pending}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

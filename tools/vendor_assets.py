#!/usr/bin/env python3
"""Fetch the book's browser-side JavaScript from the npm registry and stage it for Sphinx.

Why: the published book must work with no network (readers on a plane, our offline browser
tests), so require.js, the ipywidgets HTML manager and MathJax are served from the site itself
instead of a CDN. The packages are pinned by version *and* by the registry's sha512 integrity,
so a rebuild always ships the same bytes.

Usage:  python tools/vendor_assets.py [DEST]       (default DEST: .vendor)
Result: DEST/static/offline/{require.js, html-manager/..., mathjax/...}
        DEST/static is added to Sphinx's html_static_path by tools/sphinx_offline_assets.py,
        so the files are served as _static/offline/... and _config.yml names them that way.

Needs `npm` (Node.js) on PATH; it only runs `npm pack`, which downloads one tarball per package
(no dependency install, no install scripts).
"""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

# name, version, sha512 integrity from the registry's `dist.integrity`.
PACKAGES = [
    # ipywidgets 8.1 pairs with @jupyter-widgets/html-manager 1.0.x (ipywidgets/_version.py:
    # __html_manager_version__ = '^1.0.1'); 1.0.15 bundles @jupyter-widgets/controls 5.0.
    ("@jupyter-widgets/html-manager", "1.0.15",
     "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA=="),
    ("requirejs", "2.3.8",
     "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw=="),
    # MathJax 3 (Sphinx 7 speaks v3); tex-chtml plus what it loads on demand.
    ("mathjax", "3.2.2",
     "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="),
]

# What to copy out of each unpacked package (paths inside the tarball's `package/`),
# and where to put it under static/offline/.
COPIES = {
    "@jupyter-widgets/html-manager": [
        # embed-amd.js is self-contained (controls, base, output, CSS); the font files are
        # its webpack assets, loaded from the folder it is served from (see EMBED_SETUP_JS).
        ("dist/embed-amd.js", "html-manager/embed-amd.js"),
        ("dist/*.woff2", "html-manager/"),
        ("dist/*.woff", "html-manager/"),
        ("dist/*.ttf", "html-manager/"),
        ("dist/*.eot", "html-manager/"),
        ("dist/*.svg", "html-manager/"),
        ("package.json", "html-manager/package.json"),  # name, version, license (BSD-3-Clause)
    ],
    "requirejs": [
        ("require.js", "require.js"),  # MIT; the licence is in the file header
    ],
    "mathjax": [
        ("es5/tex-chtml.js", "mathjax/tex-chtml.js"),
        ("es5/input/tex", "mathjax/input/tex"),        # \require / autoload extensions
        ("es5/output/chtml", "mathjax/output/chtml"),  # the woff-v2 fonts
        ("es5/ui", "mathjax/ui"),                      # right-click menu
        ("es5/a11y", "mathjax/a11y"),                  # accessibility, loaded from the menu
        ("es5/sre", "mathjax/sre"),                    # speech rule engine for a11y
        ("LICENSE", "mathjax/LICENSE"),
    ],
}

OUT = "offline"  # served as _static/offline/ (not "vendor/": the theme already uses _static/vendor/)

# A script of ours, loaded after require.js and before embed-amd.js, on pages with widgets.
EMBED_SETUP_JS = r"""// perceiver-edu: make the ipywidgets HTML manager work from this site, offline.
(function () {
  var script = document.currentScript;
  var here = script.src.replace(/[^/]*$/, "");  // .../_static/offline/html-manager/
  // 1. The manager's webpack bundle resolves its font files against the folder requirejs thinks
  //    its AMD module lives in (by default, the page's folder). Map that module to this folder.
  window.__jupyter_widgets_assets_path__ = here;
  if (window.requirejs) {
    window.requirejs.config({paths: {"@jupyter-widgets/html-manager/dist": here.replace(/\/$/, "")}});
  }
  // 2. Widget modules the bundle does not contain would be fetched from a CDN (cdn.jsdelivr.net
  //    by default). The book uses none; should one appear, look on this site and fail visibly.
  script.setAttribute("data-jupyter-widgets-cdn", here + "widget-modules/");
  // 3. ipywidgets 8 typesets HTMLMath and descriptions through the MathJax 2 API
  //    (MathJax.Hub.Queue); the book loads MathJax 3. Bridge the one call it makes.
  document.addEventListener("DOMContentLoaded", function () {
    var mj = window.MathJax;
    if (!mj || mj.Hub || !mj.startup) return;
    mj.Hub = {
      Queue: function () {
        Array.prototype.forEach.call(arguments, function (cmd) {
          if (Array.isArray(cmd) && cmd[0] === "Typeset" && cmd[2]) {
            mj.startup.promise.then(function () { return mj.typesetPromise([cmd[2]]); });
          }
        });
      }
    };
  });
})();
"""


def integrity_of(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def manifest() -> str:
    """A fingerprint of what this script produces; a changed pin or copy list re-vendors."""
    text = json.dumps([PACKAGES, COPIES, EMBED_SETUP_JS, OUT], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def npm_pack(name: str, version: str, dest: Path) -> Path:
    tarball = dest / (name.lstrip("@").replace("/", "-") + f"-{version}.tgz")
    if tarball.exists():
        return tarball
    if shutil.which("npm") is None:
        sys.exit("vendor_assets: `npm` not found. Install Node.js and npm "
                 "(Debian: `apt-get install -y npm`), then re-run `make book`.")
    print(f"vendor_assets: npm pack {name}@{version}", flush=True)
    out = subprocess.run(
        ["npm", "pack", f"{name}@{version}", "--pack-destination", str(dest), "--json",
         "--ignore-scripts", "--loglevel=error"],
        check=True, capture_output=True, text=True,
    ).stdout
    filename = json.loads(out)[0]["filename"]
    return dest / Path(filename).name


def copy_out(src_root: Path, pattern: str, target: Path) -> None:
    if any(ch in pattern for ch in "*?["):
        matches = sorted(src_root.glob(pattern))
        if not matches:
            sys.exit(f"vendor_assets: nothing matches {pattern} in {src_root}")
        target.mkdir(parents=True, exist_ok=True)
        for m in matches:
            shutil.copy2(m, target / m.name)
        return
    src = src_root / pattern
    if src.is_dir():
        shutil.copytree(src, target, dirs_exist_ok=True)
    elif src.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    else:
        sys.exit(f"vendor_assets: {pattern} is missing from {src_root}")


def main() -> None:
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else ".vendor").resolve()
    static = dest / "static"
    stamp = static / ".complete"
    if stamp.exists() and stamp.read_text().strip() == manifest():
        print(f"vendor_assets: up to date in {static}")
        return

    downloads = dest / "npm"
    downloads.mkdir(parents=True, exist_ok=True)
    if static.exists():
        shutil.rmtree(static)
    vendor = static / OUT
    vendor.mkdir(parents=True)

    for name, version, integrity in PACKAGES:
        tarball = npm_pack(name, version, downloads)
        got = integrity_of(tarball)
        if got != integrity:
            tarball.unlink()
            sys.exit(f"vendor_assets: {name}@{version} integrity mismatch\n"
                     f"  expected {integrity}\n  got      {got}")
        unpacked = downloads / f"{tarball.stem}"
        if unpacked.exists():
            shutil.rmtree(unpacked)
        with tarfile.open(tarball) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12
                tar.extractall(unpacked, filter="data")
            else:
                tar.extractall(unpacked)
        for pattern, target in COPIES[name]:
            copy_out(unpacked / "package", pattern, vendor / target)
        shutil.rmtree(unpacked)

    (vendor / "html-manager" / "embed-setup.js").write_text(EMBED_SETUP_JS)
    (vendor / "VERSIONS.txt").write_text(
        "Served from the npm registry, fetched at build time by tools/vendor_assets.py:\n"
        + "".join(f"{n}@{v} {i}\n" for n, v, i in PACKAGES))
    stamp.write_text(manifest() + "\n")
    size = sum(p.stat().st_size for p in vendor.rglob("*") if p.is_file())
    print(f"vendor_assets: staged {size / 1e6:.1f} MB in {vendor}")


if __name__ == "__main__":
    main()

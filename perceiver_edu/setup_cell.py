"""What every chapter's first cell says: which perceiver-edu this is, where it came from, the device.

The cell itself (written into the notebooks by tools/repo_url.py) only installs the package when it
is not importable; everything it prints comes from `where_am_i`, so the cell stays a few lines. It
imports `seed_everything` from here too, so that one import line can sit inside its try block.
What it prints must be the same on every machine that runs the stored notebooks (nbval): no paths,
and the device line in the form tests/nbval_sanitize.cfg masks ("device: cpu (2 threads)").
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path

import torch

from .device import describe_device, pick_device, seed_everything

__all__ = ["where_am_i", "seed_everything", "package_origin", "gpu_hint", "in_colab"]

DISTRIBUTION = "perceiver-edu"
COLAB_GPU_HINT = ("This Colab runtime has no GPU, so the chapters run with their CPU settings.\n"
                  "For a GPU: Runtime > Change runtime type > T4 GPU, then run the notebook again.")


def in_colab() -> bool:
    """True inside a Colab kernel (which imports google.colab while it starts)."""
    return "google.colab" in sys.modules


def _is_checkout(package_dir: Path) -> bool:
    """True when the package is imported from a source tree (editable install or PYTHONPATH)."""
    pyproject = package_dir.parent / "pyproject.toml"
    return pyproject.is_file() and f'name = "{DISTRIBUTION}"' in pyproject.read_text(encoding="utf-8")


def _installed_distribution(package_dir: Path):
    """The installed distribution that holds `package_dir`, or None (e.g. a stray *.egg-info)."""
    for dist in importlib.metadata.distributions(name=DISTRIBUTION):
        try:
            if Path(dist.locate_file("perceiver_edu/__init__.py")).resolve() == package_dir / "__init__.py":
                return dist
        except (OSError, TypeError):
            continue
    return None


def package_origin() -> str:
    """One line: this package's name, version, and where it was installed from."""
    import perceiver_edu

    package_dir = Path(perceiver_edu.__file__).resolve().parent
    name = f"{DISTRIBUTION} {perceiver_edu.__version__}"
    if _is_checkout(package_dir):
        return f"{name}, from a local checkout of its repository"
    dist = _installed_distribution(package_dir)
    direct = dist.read_text("direct_url.json") if dist is not None else None
    if not direct:  # PEP 610: only installs from a URL (git, a folder, a file) record one
        return f"{name}, installed from a package index"
    origin = json.loads(direct)
    if "vcs_info" in origin:
        vcs = origin["vcs_info"]
        commit = vcs.get("commit_id", "")[:12]
        return f"{name}, installed from {vcs.get('vcs', 'git')}+{origin['url']}" + (f"@{commit}" if commit else "")
    return f"{name}, installed from {origin['url']}"


def gpu_hint(device: torch.device, preferred: str | None = None) -> str | None:
    """How to get a GPU, on a CPU-only Colab runtime (unless a device was asked for); else None."""
    asked = preferred or os.environ.get("PERCEIVER_EDU_DEVICE")
    if device.type == "cpu" and in_colab() and not asked:
        return COLAB_GPU_HINT
    return None


def where_am_i(preferred: str | None = None) -> torch.device:
    """Print the package and its origin, the device (and on a CPU-only Colab runtime, how to get a
    GPU); return the device the chapter should use (`device.pick_device`)."""
    device = pick_device(preferred)
    print(package_origin())
    print("device:", describe_device(device))
    hint = gpu_hint(device, preferred)
    if hint:
        print(hint)
    return device

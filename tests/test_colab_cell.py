"""The chapters' first cell: what `perceiver_edu.setup_cell` prints, and the cell run in IPython.

The cell's install path (the package missing, pip installing it from a git URL beside Colab's
packages) is exercised for real by tests/test_colab_env.py.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from perceiver_edu import setup_cell

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import repo_url  # noqa: E402


def nbval_sanitize(text: str) -> str:
    """Apply tests/nbval_sanitize.cfg's regexes in order, with nbval's own parser."""
    from nbval.plugin import get_sanitize_patterns

    for regex, replace in get_sanitize_patterns((ROOT / "tests" / "nbval_sanitize.cfg").read_text()):
        text = re.sub(regex, replace, text)
    return text


@pytest.fixture
def fake_colab(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", ModuleType("google.colab"))
    monkeypatch.delenv("PERCEIVER_EDU_DEVICE", raising=False)


class FakeDistribution:
    def __init__(self, direct_url: dict | None):
        self.direct_url = direct_url

    def read_text(self, name):
        assert name == "direct_url.json"
        return None if self.direct_url is None else json.dumps(self.direct_url)


def test_origin_of_a_checkout_names_no_path():
    # this repository's package is imported from the source tree (editable install or PYTHONPATH)
    assert setup_cell.package_origin() == "perceiver-edu 0.1.0, from a local checkout of its repository"


@pytest.mark.parametrize("direct_url, expected", [
    ({"url": "https://github.com/o/r", "vcs_info": {"vcs": "git", "commit_id": "0123456789abcdef0123"}},
     "perceiver-edu 0.1.0, installed from git+https://github.com/o/r@0123456789ab"),
    ({"url": "file:///tmp/wheels/perceiver_edu-0.1.0-py3-none-any.whl", "archive_info": {}},
     "perceiver-edu 0.1.0, installed from file:///tmp/wheels/perceiver_edu-0.1.0-py3-none-any.whl"),
    (None, "perceiver-edu 0.1.0, installed from a package index"),
])
def test_origin_of_an_installed_package(monkeypatch, direct_url, expected):
    monkeypatch.setattr(setup_cell, "_is_checkout", lambda package_dir: False)
    monkeypatch.setattr(setup_cell, "_installed_distribution", lambda package_dir: FakeDistribution(direct_url))
    assert setup_cell.package_origin() == expected


def test_gpu_hint_only_on_a_cpu_only_colab_runtime(fake_colab, monkeypatch):
    assert "Runtime > Change runtime type" in setup_cell.gpu_hint(torch.device("cpu"))
    assert setup_cell.gpu_hint(torch.device("cuda")) is None
    monkeypatch.setenv("PERCEIVER_EDU_DEVICE", "cpu")      # the CPU was asked for: no advice
    assert setup_cell.gpu_hint(torch.device("cpu")) is None
    monkeypatch.delitem(sys.modules, "google.colab")        # not on Colab
    monkeypatch.delenv("PERCEIVER_EDU_DEVICE")
    assert setup_cell.gpu_hint(torch.device("cpu")) is None


def test_where_am_i_output_is_the_same_on_every_machine_after_sanitising(capsys, fake_colab):
    device = setup_cell.where_am_i("cpu")
    assert device == torch.device("cpu")
    lines = nbval_sanitize(capsys.readouterr().out).splitlines()
    # explicitly asked for the CPU: no GPU advice; the device line is masked by nbval_sanitize.cfg
    assert lines == ["perceiver-edu 0.1.0, from a local checkout of its repository", "device: DEVICE"]
    setup_cell.where_am_i()  # on a (fake) CPU-only Colab runtime: the advice follows
    out = capsys.readouterr().out
    if not torch.cuda.is_available():
        assert out.splitlines()[2:] == setup_cell.COLAB_GPU_HINT.splitlines()
        assert max(len(line) for line in out.splitlines()) <= 80  # readable in a notebook's output


def test_setup_cell_fits_the_column_and_names_the_config_url():
    cell = repo_url.render_cell(repo_url.config_url())
    assert all(len(line) <= 77 for line in cell.splitlines()), [l for l in cell.splitlines() if len(l) > 77]
    assert cell.count(repo_url.config_url()) == 1
    assert '%pip install -q "perceiver-edu @ git+{REPO}"' in cell


def test_setup_cell_runs_in_ipython_when_the_package_is_importable(tmp_path):
    """The rendered cell, run by IPython exactly as a kernel would: no install, two lines, `device`."""
    script = (
        "import sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        f"result = shell.run_cell({repo_url.render_cell(repo_url.config_url())!r})\n"
        "result.raise_error()\n"
        "print('DEVICE-TYPE', shell.user_ns['device'].type, callable(shell.user_ns['seed_everything']))\n")
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipython"), "PERCEIVER_EDU_DEVICE": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "perceiver-edu 0.1.0, from a local checkout of its repository", run.stdout
    assert lines[1].startswith("device: cpu (") and lines[2] == "DEVICE-TYPE cpu True", run.stdout
    assert "pip" not in run.stdout.lower()  # importable, so nothing was installed

"""Colab as it ships, as far as it can be tested here: a chapter's first cell installs the package
beside Colab's preinstalled stack without changing it, and the widgets and chapter 7 then work.

The Colab-like environment is .venv-colab (`make colab-env`, which `make test` runs first): a
virtualenv built from requirements-colab.txt, i.e. Colab's own versions of ipywidgets (7.7.1),
ipykernel, IPython, numpy, matplotlib... (see that file), without perceiver-edu.

`test_a_chapter_installs_beside_colabs_packages_and_runs` clones this repository at HEAD (committed
work only; PERCEIVER_EDU_COLAB_REF=<commit> tests another commit) and runs this file as a script in
.venv-colab, which does everything in ONE Python process, as a Colab kernel would:
  1. import ipywidgets first (Colab's kernel imports it while it starts);
  2. run chapter 7's first cell exactly as it is written (or, while the stored chapter still has the
     older cell, as tools/repo_url.py renders it) in IPython, its REPO pointed at the clone
     (git+file://), and record every installed distribution's version before and after;
  3. build the live explorer from the shipped checkpoint, move a slider, and read the picture;
     build a static explorer (no Stack on ipywidgets 7: tabs and a note);
  4. execute chapter 7 headlessly with nbclient, in a kernel of the same environment, on the
     offline CIFAR-10 copy ($PERCEIVER_EDU_DATA), on the CPU.
pip may consult the package index, as on Colab, but must change nothing; what it needs to build the
package (pyproject.toml's build-system requires) is also cached in .venv-colab/build-wheels on the
first run, so the test passes offline afterwards. Afterwards perceiver-edu is uninstalled again, and
anything the install changed is put back.

`test_explorer_unit_tests_pass_on_ipywidgets_7` runs tests/test_explorer.py in .venv-colab (the
same file runs on ipywidgets 8 in .venv as part of the normal suite).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLAB_VENV = Path(os.environ.get("PERCEIVER_EDU_COLAB_VENV") or ROOT / ".venv-colab")
COLAB_PYTHON = COLAB_VENV / "bin" / "python"
BASELINE = COLAB_VENV / "baseline-freeze.txt"  # `pip freeze --all` right after `make colab-env`
BUILD_WHEELS = COLAB_VENV / "build-wheels"  # the build backend, for pip's isolated build offline
CHAPTER = Path("notebooks") / "07_attention_maps.ipynb"
DISTRIBUTION = "perceiver-edu"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """{normalized name: version} of every distribution this Python sees."""
    return {normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}


# -------------------------------------------------------------------------------------------------
# The session: run by .venv-colab's Python as `python tests/test_colab_env.py --clone DIR ...`
def setup_cell_for(clone: Path) -> str:
    """Chapter 7's first code cell as stored in the clone; the tool's rendering if it predates it."""
    sys.path.insert(0, str(ROOT / "tools"))
    import nbformat
    import repo_url

    nb = nbformat.read(clone / CHAPTER, as_version=4)
    source = repo_url._source(repo_url._setup_cell(nb))
    if source.splitlines()[0] != repo_url.SETUP_FIRST_LINE:
        source = repo_url.render_cell(repo_url.config_url(clone))
    return source


def run_install_cell(clone: Path, report: dict) -> bool:
    from IPython.core.interactiveshell import InteractiveShell
    sys.path.insert(0, str(ROOT / "tools"))
    import repo_url

    cell = setup_cell_for(clone)
    repo_line = f'REPO = "{repo_url.config_url(clone)}"'
    assert cell.count(repo_line) == 1, f"the setup cell has no line {repo_line!r}:\n{cell}"
    cell = cell.replace(repo_line, f'REPO = "{clone.as_uri()}"')
    report["cell"] = cell
    report["before"] = before = installed()
    shell = InteractiveShell.instance(colors="NoColor")  # plain tracebacks in the test's log
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        result = shell.run_cell(cell)
    report["cell_output"] = output.getvalue()
    print(report["cell_output"], end="")
    report["cell_error"] = None if result.success else repr(result.error_before_exec or result.error_in_exec)
    report["pip_exit_code"] = shell.user_ns.get("_exit_code")
    after = installed()
    report["changed"] = {name: [before[name], after.get(name)] for name in before if after.get(name) != before[name]}
    report["added"] = {name: after[name] for name in after if name not in before}
    report["device"] = str(shell.user_ns.get("device"))
    return result.success


def drive_explorers(report: dict) -> None:
    """The live explorer from the shipped checkpoint, driven from Python; a static explorer."""
    import matplotlib
    matplotlib.use("Agg")
    import ipywidgets
    import torch

    from perceiver_edu.assets import load_pretrained
    from perceiver_edu.attention_maps import collect_attention
    from perceiver_edu.explorer import AttentionExplorer, static_explorer

    model, info = load_pretrained()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), generator=generator, dtype=torch.uint8)
    live = AttentionExplorer(model, images, labels=torch.tensor([0, 1, 2, 3]))
    maps, reverse = bytes(live.maps_view.value), bytes(live.reverse_view.value)
    live.latent.value = 17
    maps_after_latent = bytes(live.maps_view.value)
    live.pixel_x.value = 3
    live.mode.value = "top"
    bundle = live._repr_mimebundle_()
    static = static_explorer(collect_attention(model, images[:2].float() / 255), [0, 5, 9])
    report["explorers"] = {
        "ipywidgets": ipywidgets.__version__,
        "png": maps.startswith(b"\x89PNG"),
        "latent_slider_changed_maps": maps_after_latent != maps,
        "pixel_slider_changed_reverse_view": bytes(live.reverse_view.value) != reverse,
        "view_model_id": bundle.get("application/vnd.jupyter.widget-view+json", {}).get("model_id"),
        "widget_model_id": live.widget.model_id,
        "static_uses_stack": static.choice.uses_stack,
        "static_first_line": getattr(static.widget.children[0], "value", ""),
        "static_text": static._repr_mimebundle_()["text/plain"],
        "static_pictures": len(static.png_sizes),
    }


def execute_chapter(clone: Path, report: dict, work: Path) -> None:
    """Chapter 7 in a kernel of this environment, its first cell as in `setup_cell_for`."""
    import nbformat
    from nbclient import NotebookClient

    kernels = work / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True, exist_ok=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (Colab-like)", "language": "python"}))
    os.environ["JUPYTER_PATH"] = str(work / "jupyter")  # this kernel, not one installed elsewhere
    nb = nbformat.read(clone / CHAPTER, as_version=4)
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    first.source = setup_cell_for(clone)
    start = time.perf_counter()
    client = NotebookClient(nb, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": str(clone / "notebooks")}})
    try:
        client.execute()
        report["chapter_error"] = None
    except Exception as error:  # CellExecutionError and friends: report, the test says what failed
        report["chapter_error"] = f"{type(error).__name__}: {str(error)[-3000:]}"
    report["chapter_seconds"] = round(time.perf_counter() - start, 1)
    report["chapter_setup_output"] = "".join(o.get("text", "") for o in first.get("outputs", []))
    report["chapter_code_cells"] = sum(1 for cell in nb.cells if cell.cell_type == "code")


def session(argv=None) -> int:
    import ipywidgets  # noqa: F401  first, as Colab's kernel does while it starts

    parser = argparse.ArgumentParser()
    parser.add_argument("--clone", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--skip-chapter", action="store_true", help="steps 1-3 only (for debugging)")
    args = parser.parse_args(argv)
    report: dict = {"python": sys.version.split()[0], "ipywidgets_first": sys.modules["ipywidgets"].__version__,
                    "importable_before": importlib.util.find_spec("perceiver_edu") is not None}
    try:
        if not report["importable_before"] and run_install_cell(args.clone, report):
            drive_explorers(report)
            if not args.skip_chapter:
                execute_chapter(args.clone, report, args.work)
    finally:
        args.report.write_text(json.dumps(report, indent=1, default=str))
    return 0


# -------------------------------------------------------------------------------------------------
# The tests: run by pytest in .venv
if __name__ != "__main__":
    import pytest

    def run_colab(*args, env=None, timeout=600, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([str(COLAB_PYTHON), *args], capture_output=True, text=True, timeout=timeout,
                              env=env, **kwargs)

    def colab_distributions() -> dict[str, str]:
        script = ("import importlib.metadata as m, json, re; print(json.dumps({re.sub(r'[-_.]+', '-', "
                  "d.metadata['Name']).lower(): d.version for d in m.distributions()}))")
        run = run_colab("-c", script, cwd="/")
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    def restore(baseline: dict[str, str]) -> None:
        """Put .venv-colab back as `make colab-env` left it: no perceiver-edu, nothing changed."""
        now = colab_distributions()
        extra = [name for name in now if name not in baseline]
        if extra:
            run_colab("-m", "pip", "uninstall", "-y", "-q", *extra)
        changed = [f"{name}=={version}" for name, version in baseline.items() if now.get(name) != version]
        if changed:
            run = run_colab("-m", "pip", "install", "-q", "--no-deps", *changed, timeout=1200)
            assert run.returncode == 0, f"could not restore {COLAB_VENV}: {run.stderr[-2000:]}; rebuild it " \
                                        f"with `rm -rf {COLAB_VENV} && make colab-env`"
        assert colab_distributions() == baseline, f"{COLAB_VENV} differs from {BASELINE} after restoring"

    def cache_build_wheels() -> None:
        """Wheels of the build backend (+ wheel), downloaded once, so a later run needs no index."""
        text = (ROOT / "pyproject.toml").read_text()
        requires = re.findall(r'"([^"]+)"',
                              re.search(r"^requires\s*=\s*\[(.*?)\]", text, re.MULTILINE | re.DOTALL).group(1))
        requires.append("wheel")
        stamp = BUILD_WHEELS / ".requires"
        if stamp.is_file() and stamp.read_text() == json.dumps(requires):
            return
        run = run_colab("-m", "pip", "download", "-q", "--no-deps", "-d", str(BUILD_WHEELS), *requires, timeout=600)
        assert run.returncode == 0, (f"could not download {requires} (needs the package index once): "
                                     f"{run.stderr[-2000:]}")
        stamp.write_text(json.dumps(requires))

    @pytest.fixture(scope="module")
    def baseline() -> dict[str, str]:
        if not COLAB_PYTHON.is_file() or not BASELINE.is_file():
            pytest.fail(f"the Colab-like environment {COLAB_VENV} is missing or incomplete: run `make colab-env` "
                        f"(make test does), or point PERCEIVER_EDU_COLAB_VENV at one")
        pins = {}
        for line in BASELINE.read_text().splitlines():
            name, _, version = line.partition("==")
            if version:
                pins[normalize(name)] = version
        restore(pins)  # e.g. after an interrupted run
        cache_build_wheels()
        yield pins
        restore(pins)

    def test_explorer_unit_tests_pass_on_ipywidgets_7(baseline):
        assert baseline["ipywidgets"].startswith("7.7"), baseline["ipywidgets"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
        run = run_colab("-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
                        "tests/test_explorer.py", cwd=ROOT, env=env, timeout=900)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
        assert re.search(r"\b\d+ passed\b", run.stdout) and " failed" not in run.stdout, run.stdout[-2000:]

    def test_a_chapter_installs_beside_colabs_packages_and_runs(baseline, tmp_path):
        data = os.environ.get("PERCEIVER_EDU_DATA")
        if not data or not (Path(data) / "cifar-10-batches-py").is_dir():
            pytest.fail("chapter 7 needs the CIFAR-10 copy: set PERCEIVER_EDU_DATA to a folder that holds "
                        "cifar-10-batches-py/ (make test does when ../shared is beside the repository)")
        clone = tmp_path / "perceiver-edu"
        ref = os.environ.get("PERCEIVER_EDU_COLAB_REF", "HEAD")
        subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(clone)], check=True, timeout=300)
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], check=True, capture_output=True,
                                text=True).stdout.strip()
        subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", "-B", "main", commit], check=True, timeout=300)
        (tmp_path / "work").mkdir()
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PERCEIVER_EDU_DEVICE": "cpu", "PYTHONHASHSEED": "0",
               "IPYTHONDIR": str(tmp_path / "ipython"), "PERCEIVER_EDU_DATA": data,
               "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
               "PIP_FIND_LINKS": str(BUILD_WHEELS)}
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        report_path = tmp_path / "report.json"
        run = run_colab(str(Path(__file__).resolve()), "--clone", str(clone), "--report", str(report_path),
                        "--work", str(tmp_path / "work"), cwd=tmp_path / "work", env=env, timeout=1800)
        log = f"\n--- stdout\n{run.stdout[-4000:]}\n--- stderr\n{run.stderr[-4000:]}"
        assert report_path.is_file(), f"the session wrote no report (exit {run.returncode}){log}"
        report = json.loads(report_path.read_text())
        print(json.dumps({k: v for k, v in report.items() if k not in ("before", "cell")}, indent=1))

        assert report["ipywidgets_first"].startswith("7.7") and not report["importable_before"], report
        # 1. the install changed no installed distribution, and added only the package itself
        assert report["changed"] == {}, f"installing the package changed Colab's packages: {report['changed']}{log}"
        assert set(report["added"]) == {DISTRIBUTION}, report["added"]
        assert report["cell_error"] is None and report["pip_exit_code"] == 0, f"{report['cell_error']}{log}"
        lines = report["cell_output"].splitlines()
        assert f"{DISTRIBUTION} {report['added'][DISTRIBUTION]}, installed from git+{clone.as_uri()}@{commit[:12]}" \
            in lines, report["cell_output"]
        assert "device: cpu (" in report["cell_output"] and report["device"] == "cpu"
        # 2. the widgets work on ipywidgets 7.7.1
        explorers = report["explorers"]
        assert explorers["ipywidgets"] == report["ipywidgets_first"] and explorers["png"]
        assert explorers["latent_slider_changed_maps"] and explorers["pixel_slider_changed_reverse_view"]
        assert explorers["view_model_id"] == explorers["widget_model_id"]
        assert not explorers["static_uses_stack"] and "has no Stack widget" in explorers["static_first_line"]
        assert explorers["static_pictures"] == 2 * 3 and explorers["static_text"].startswith("StaticExplorer: 2 images")
        # 3. chapter 7 ran from top to bottom in a kernel of the same environment
        assert report["chapter_error"] is None, report["chapter_error"]
        assert f"installed from git+{clone.as_uri()}" in report["chapter_setup_output"], report["chapter_setup_output"]
        print(f"chapter 7: {report['chapter_code_cells']} code cells in {report['chapter_seconds']} s")


if __name__ == "__main__":
    sys.exit(session())

"""One repository URL: _config.yml's repository.url, and every copy that tools/repo_url.py writes.

The check runs on this repository as it is, and on a temporary copy (config, pyproject.toml,
notebooks) where it is written, then altered one copy at a time: each change must fail it.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import repo_url  # noqa: E402

OTHER = "https://github.com/someone-else/perceiver-edu"


def test_every_copy_in_this_repository_agrees():
    problems, _ = repo_url.check(ROOT)
    assert problems == []
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "repo_url.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "every copy agrees" in run.stdout, run.stdout + run.stderr


@pytest.fixture
def copy(tmp_path) -> Path:
    """The files that hold the URL, copied: _config.yml, pyproject.toml, notebooks/*.ipynb."""
    shutil.copy(ROOT / "_config.yml", tmp_path)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "notebooks").mkdir()
    for path in repo_url.notebooks(ROOT):
        shutil.copy(path, tmp_path / "notebooks")
    return tmp_path


def setup_source(path: Path) -> str:
    return repo_url._source(repo_url._setup_cell(nbformat.read(path, as_version=4)))


def set_setup_source(path: Path, source: str) -> None:
    nb = nbformat.read(path, as_version=4)
    repo_url._setup_cell(nb)["source"] = source
    nbformat.write(nb, path)


def older_cell(url: str) -> str:
    """A setup cell from before SETUP_CELL: it installs from `url`, but its first line is another."""
    return (f'try:\n    import perceiver_edu  # noqa: F401\nexcept ImportError:\n'
            f'    %pip install -q "perceiver-edu @ git+{url}"\n')


def write(root: Path) -> int:
    return repo_url.main(["--write", "--root", str(root)])


def test_write_then_check_passes_and_touches_only_the_setup_cell(copy):
    before = {p.name: nbformat.read(p, as_version=4) for p in repo_url.notebooks(copy)}
    assert write(copy) == 0
    assert repo_url.check(copy) == ([], [])  # nothing left with the older cell
    url = repo_url.config_url(copy)
    for path in repo_url.notebooks(copy):
        after = nbformat.read(path, as_version=4)
        assert setup_source(path) == repo_url.render_cell(url)
        old = before[path.name]
        first = next(i for i, c in enumerate(after.cells) if c.cell_type == "code")
        assert after.cells[:first] + after.cells[first + 1:] == old.cells[:first] + old.cells[first + 1:]
        assert after.cells[first].outputs == old.cells[first].outputs and after.metadata == old.metadata
    stamp = {p: p.read_bytes() for p in repo_url.notebooks(copy)}
    assert write(copy) == 0 and stamp == {p: p.read_bytes() for p in repo_url.notebooks(copy)}  # idempotent


def test_one_notebook_with_another_url_fails(copy, capsys):
    write(copy)
    chapter = repo_url.notebooks(copy)[3]
    set_setup_source(chapter, setup_source(chapter).replace(repo_url.config_url(copy), OTHER))
    problems, _ = repo_url.check(copy)
    assert any(chapter.name in p and OTHER in p for p in problems), problems
    assert repo_url.main(["--check", "--root", str(copy)]) == 1
    assert "python tools/repo_url.py --write" in capsys.readouterr().err
    assert write(copy) == 0 and repo_url.check(copy) == ([], [])  # --write repairs it


def test_an_older_setup_cell_must_carry_the_same_url(copy):
    chapters = repo_url.notebooks(copy)
    for chapter in chapters:
        set_setup_source(chapter, older_cell(repo_url.config_url(copy)))
    assert repo_url.check(copy)[0] == []  # older cells alone are accepted while their URL agrees
    set_setup_source(chapters[0], older_cell(OTHER))
    assert any(chapters[0].name in p for p in repo_url.check(copy)[0])


def test_a_hand_edited_or_partial_rewrite_fails(copy):
    chapters = repo_url.notebooks(copy)
    url = repo_url.config_url(copy)
    for chapter in chapters[1:]:
        set_setup_source(chapter, older_cell(url))
    set_setup_source(chapters[0], repo_url.render_cell(url))  # one new cell among older ones
    assert any("only some chapters" in p for p in repo_url.check(copy)[0])
    write(copy)
    set_setup_source(chapters[1], repo_url.render_cell(url).replace("seed_everything(0)", "seed_everything(1)"))
    assert any(chapters[1].name in p and "differs from" in p for p in repo_url.check(copy)[0])


def test_pyproject_and_config_are_copies_too(copy):
    write(copy)
    pyproject = copy / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace(f'Homepage = "{repo_url.config_url(copy)}"', f'Homepage = "{OTHER}"'))
    assert any("Homepage" in p for p in repo_url.check(copy)[0])
    pyproject.write_text(text)
    config = copy / "_config.yml"
    config.write_text(config.read_text().replace(repo_url.config_url(copy), OTHER))
    problems, _ = repo_url.check(copy)  # every copy now differs from the new URL
    assert len(problems) == len(repo_url.PYPROJECT_URL_KEYS) + len(repo_url.notebooks(copy)), problems
    assert write(copy) == 0 and repo_url.check(copy) == ([], [])
    assert f'Repository = "{OTHER}"' in pyproject.read_text()
    assert all(f'REPO = "{OTHER}"' in setup_source(p) for p in repo_url.notebooks(copy))


def test_config_url_is_read_from_the_repository_block(tmp_path):
    (tmp_path / "_config.yml").write_text(
        "title: x\nhtml:\n  url: https://wrong.example\nrepository:\n  # the one place\n"
        "  branch: main\n  url: \"https://github.com/a/b/\"\n  path_to_book: ''\n")
    assert repo_url.config_url(tmp_path) == "https://github.com/a/b"
    (tmp_path / "_config.yml").write_text("title: x\n")
    with pytest.raises(SystemExit, match="no repository.url"):
        repo_url.config_url(tmp_path)


def test_cell_mode_prints_the_rendered_cell():
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "repo_url.py"), "--cell", "file:///x/y"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.rstrip("\n") == repo_url.render_cell("file:///x/y")

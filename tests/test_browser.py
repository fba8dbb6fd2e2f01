"""The course as a learner uses it: JupyterLab in a real (headless) Chromium, Run All, look at the page.

Starts the README's "open the course" command on 127.0.0.1 with a random port and token, opens
notebooks, runs every cell from the Run menu, waits for the kernel to go idle, and checks that no
cell failed, that figures are rendered as images and that tqdm draws a progress-bar widget.
Screenshots go to artifacts/browser/. Skips when Chromium is missing, except under CI=true.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
RUN_TIMEOUT_S = 600


def readme_open_command() -> list[str]:
    """The command in the README's "Open the course" section: what a learner types."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Open the course", 1)[1]
    command = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()
    return shlex.split(command)


@pytest.fixture(scope="module")
def chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    message = "Chromium not found at /usr/bin/chromium: install it with `sudo apt-get install chromium` (Debian/Ubuntu)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " — CI must install it (.ci/run does).")
    pytest.skip(message)


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory, chromium):
    """Start the README's JupyterLab command on loopback; stop it and its kernels afterwards."""
    command = readme_open_command()
    assert command[:2] == ["jupyter", "lab"], f"the README's command should start JupyterLab, got {command}"
    workdir = tmp_path_factory.mktemp("course")
    # A copy of the notebooks, so that JupyterLab's autosave never rewrites the stored outputs.
    shutil.copytree(ROOT / "notebooks", workdir / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    runtime_dir = tmp_path_factory.mktemp("jupyter-runtime")
    port = _free_port()
    token = secrets.token_hex(16)
    server_flags = [
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        server_flags.append("--allow-root")
    # Attach every cell to the page (windowing mode "none") so that what the checks look for is in
    # the DOM whatever the scroll position; the learner's default only defers off-screen cells.
    settings_dir = tmp_path_factory.mktemp("lab-settings")
    tracker = settings_dir / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"windowingMode": "none"}\n')
    env = dict(
        os.environ, JUPYTER_RUNTIME_DIR=str(runtime_dir), JUPYTERLAB_SETTINGS_DIR=str(settings_dir),
        MNIST_GUIDE_ROOT=str(ROOT),
    )
    log_path = runtime_dir / "jupyter.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [*command, *server_flags], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(base_url, token, server, log_path)
        yield {"url": base_url, "token": token, "workdir": workdir}
    finally:
        _shutdown(server, base_url, token)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_server(base_url: str, token: str, server: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"jupyter lab exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/api/status?token={token}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer within 90 s:\n{log_path.read_text()[-3000:]}")


def _shutdown(server: subprocess.Popen, base_url: str, token: str) -> None:
    """Shut the kernels and the server down; kill the whole process group if they linger."""
    try:
        request = urllib.request.Request(f"{base_url}/api/shutdown?token={token}", method="POST")
        urllib.request.urlopen(request, timeout=10).close()
    except OSError:
        pass
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(server.pid, signal.SIGKILL)  # kernels live in the server's process group
    except ProcessLookupError:
        pass
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


# Reads the notebook model through window.jupyterapp (exposed by --LabApp.expose_app_in_browser).
_NOTEBOOK_STATE_JS = """
() => {
  const widget = window.jupyterapp.shell.currentWidget;
  if (!widget || !widget.content || !widget.content.model) return null;
  const cells = [];
  let index = -1;
  for (const cell of widget.content.model.cells) {
    index++;
    if (cell.type !== 'code') continue;
    const outputs = [];
    for (let i = 0; i < cell.outputs.length; i++) outputs.push(cell.outputs.get(i).toJSON());
    cells.push({index, count: cell.executionCount, source: cell.sharedModel.getSource().slice(0, 80), outputs});
  }
  const kernel = widget.sessionContext.session && widget.sessionContext.session.kernel;
  return {status: kernel ? kernel.status : 'none', cells};
}
"""


def _run_notebook_in_lab(page, jupyter_lab, name: str, screenshot: Path) -> dict:
    """Open `notebooks/<name>`, clear it, Run All from the menu, wait for idle; return the final state."""
    # `jupyter lab notebooks/00_start_here.ipynb` serves the notebooks folder as its root.
    # A workspace of its own per notebook, so the page restores no tabs from an earlier test.
    workspace = Path(name).stem.replace("_", "-")
    page.goto(f"{jupyter_lab['url']}/lab/workspaces/{workspace}/tree/{name}?reset&token={jupyter_lab['token']}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", state="attached", timeout=120_000)
    page.wait_for_function(
        "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        " return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
        " && w.sessionContext.session.kernel.status === 'idle'; }",
        timeout=120_000,
    )
    assert page.locator(".jp-Dialog").count() == 0, "a dialog (e.g. 'Select Kernel') opened with the notebook"
    # ipywidgets' manager registers its comm target on the kernel connection a moment after the
    # kernel is idle; widgets created before that render as their plain-text fallback.
    page.wait_for_function(
        "() => { const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;"
        " return !!(k && k._targetRegistry && k._targetRegistry['jupyter.widget']); }",
        timeout=60_000,
    )
    news = page.locator(".jp-toast-button", has_text=re.compile("^No$"))  # "notified about Jupyter news?"
    if news.count():
        news.first.click()
    _menu(page, "Edit", "Clear Outputs of All Cells")
    page.wait_for_function(
        "() => [...window.jupyterapp.shell.currentWidget.content.model.cells]"
        ".every(c => c.type !== 'code' || c.executionCount === null)",
        timeout=30_000,
    )
    _menu(page, "Run", "Run All Cells")
    page.wait_for_function(
        """() => { const w = window.jupyterapp.shell.currentWidget;
                   const cells = [...w.content.model.cells].filter(c => c.type === 'code'
                                  && c.sharedModel.getSource().trim() !== '');
                   const failed = cells.some(c => { for (let i = 0; i < c.outputs.length; i++)
                                  { if (c.outputs.get(i).type === 'error') return true; } return false; });
                   const done = cells.every(c => c.executionCount !== null);
                   return (failed || done) && w.sessionContext.session.kernel.status === 'idle'; }""",
        timeout=RUN_TIMEOUT_S * 1000,
        polling=1000,
    )
    page.wait_for_timeout(1500)  # let the last outputs and widgets render
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=False)
    return page.evaluate(_NOTEBOOK_STATE_JS)


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).first.click()


def _assert_ran_cleanly(state: dict, page, name: str) -> None:
    assert state is not None, f"{name}: no notebook open"
    errors = [
        (cell["source"], out.get("ename"), out.get("evalue"))
        for cell in state["cells"] for out in cell["outputs"] if out.get("output_type") == "error"
    ]
    assert not errors, f"{name}: cells raised in JupyterLab: {errors}"
    unrun = [cell["source"] for cell in state["cells"] if cell["count"] is None and cell["source"].strip()]
    assert not unrun, f"{name}: cells never ran: {unrun}"
    assert state["status"] == "idle"
    assert page.locator(".jp-OutputArea-output .jp-RenderedText:has-text('Traceback')").count() == 0
    assert page.locator("text=IProgress not found").count() == 0, f"{name}: tqdm fell back to text (ipywidgets missing?)"


def _rendered_images(page) -> int:
    """Count figures rendered as images that actually decoded (natural width above zero)."""
    return page.evaluate(
        "() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-RenderedImage img')]"
        ".filter(img => img.complete && img.naturalWidth > 0).length"
    )


def test_start_here_runs_in_jupyterlab(jupyter_lab, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        state = _run_notebook_in_lab(page, jupyter_lab, "00_start_here.ipynb", ROOT / "artifacts" / "browser" / "00_start_here.png")
        _assert_ran_cleanly(state, page, "00_start_here")
        assert _rendered_images(page) >= 1, "the digit grid was not rendered as an image"
        page.locator(".jp-RenderedImage img").first.scroll_into_view_if_needed()
        page.screenshot(path=str(ROOT / "artifacts" / "browser" / "00_start_here_figure.png"))
    finally:
        page.close()


def test_training_notebook_runs_in_jupyterlab_with_progress_bars(jupyter_lab, browser):
    if not (ROOT / "notebooks" / "07_mnist_cnn.ipynb").exists():
        pytest.skip("notebooks/07_mnist_cnn.ipynb is not written yet")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        state = _run_notebook_in_lab(page, jupyter_lab, "07_mnist_cnn.ipynb", ROOT / "artifacts" / "browser" / "07_mnist_cnn.png")
        _assert_ran_cleanly(state, page, "07_mnist_cnn")
        assert _rendered_images(page) >= 1, "no figure was rendered as an image"
        widget_cells = [
            cell["index"] for cell in state["cells"]
            if any("application/vnd.jupyter.widget-view+json" in out.get("data", {}) for out in cell["outputs"])
        ]
        assert widget_cells, "tqdm.auto produced no widget output"
        # Bring the training cell into view for the screenshot.
        page.evaluate(
            "i => { const notebook = window.jupyterapp.shell.currentWidget.content;"
            " notebook.activeCellIndex = i; return notebook.scrollToItem(i, 'start'); }",
            widget_cells[-1],
        )
        bars = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .widget-hbox:has(.widget-hprogress)")
        try:
            bars.first.wait_for(state="attached", timeout=60_000)
        except Exception:  # say what the output area shows instead of the bar
            shown = page.evaluate(
                "i => { const cell = window.jupyterapp.shell.currentWidget.content.widgets[i];"
                " const area = cell && cell.node.querySelector('.jp-OutputArea');"
                " return area ? area.innerText.slice(0, 2000) : 'no output area'; }",
                widget_cells[-1],
            )
            page.screenshot(path=str(ROOT / "artifacts" / "browser" / "07_mnist_cnn_no_bar.png"))
            pytest.fail(f"the progress-bar widget was not rendered; the training cell's output shows:\n{shown}")
        assert bars.count() >= 1, "the progress-bar widget was not rendered"
        assert "100%" in bars.first.inner_text(), "the first epoch's progress bar did not reach 100 %"
        bars.first.scroll_into_view_if_needed()
        page.screenshot(path=str(ROOT / "artifacts" / "browser" / "07_mnist_cnn_progress.png"))
    finally:
        page.close()

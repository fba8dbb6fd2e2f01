"""The course as a learner uses it: JupyterLab in a real (headless) Chromium, Run All, look at the page.

Starts the README's "open the course" command exactly as written (so with the course's JupyterLab
settings in `jupyterlab-settings/`) on 127.0.0.1 with a random port and token, with empty user
settings and workspaces as a new learner has them. For each notebook: open it, clear every output,
Run > Run All Cells, wait until every cell has run, then check that no cell failed, that every
figure is rendered as an image, that tqdm's progress bars are widgets where the notebook has them,
and that the kernel never showed "Idle" for long while cells were still waiting to run.
Screenshots go to artifacts/browser/. Skips when Chromium is missing, except under CI=true.

`pytest` runs the start notebook; `pytest -m browser_rest tests/test_browser.py` runs every other
notebook the same way (CI runs both). The "Idle while cells wait" check bites in the notebooks that
train with progress bars (07, 12), so it lives in the `browser_rest` run.
"""

from __future__ import annotations

import json
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

from mnist_guide.runtime import free_port

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
RUN_TIMEOUT_S = 1200  # Run All of one notebook, start to end
STALL_S = 300  # no message from the kernel for this long while cells still wait: stuck
LONGEST_IDLE_S = 10  # the kernel may show "Idle" between two cells, not for longer while cells wait
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _in_default_run(notebook: Path) -> bool:
    """The start notebook runs under plain `pytest`; the rest under `browser_rest`."""
    return notebook.name.startswith("00_")


NOTEBOOKS = [
    pytest.param(path.name, id=path.stem, marks=() if _in_default_run(path) else pytest.mark.browser_rest)
    for path in sorted((ROOT / "notebooks").glob("*.ipynb"))
]


def readme_open_command() -> list[str]:
    """The command in the README's "Open the course" section: what a learner types."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Open the course", 1)[1]
    command = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()
    return shlex.split(command)


def _paths_named_by(command: list[str]) -> list[str]:
    """Top-level repository files and folders the command names (`notebooks/x.ipynb`, `--Opt=folder`)."""
    named = set()
    for argument in command:
        value = argument.split("=", 1)[1] if argument.startswith("--") and "=" in argument else argument
        top = Path(value).parts[0] if value and not Path(value).is_absolute() else ""
        if top and (ROOT / top).exists():
            named.add(top)
    return sorted(named)


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory, chromium):
    """Start the README's JupyterLab command on loopback; stop it and its kernels afterwards."""
    command = readme_open_command()
    assert command[:2] == ["jupyter", "lab"], f"the README's command should start JupyterLab, got {command}"
    workdir = tmp_path_factory.mktemp("course")
    # A copy of what the command names (the notebooks, the settings folder), so that JupyterLab's
    # autosave never rewrites the stored outputs; MNIST_GUIDE_ROOT points the package at data/.
    for name in _paths_named_by(command):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, workdir / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        else:
            shutil.copy(source, workdir / name)
    runtime_dir = tmp_path_factory.mktemp("jupyter-runtime")
    port = free_port()
    token = secrets.token_hex(16)
    # How to reach the server, not what the learner sees; `expose_app_in_browser` lets the test read
    # the notebook model from the page.
    server_flags = [
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        "--LabApp.expose_app_in_browser=True",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        server_flags.append("--allow-root")
    # A new learner: no user settings, no saved workspaces.
    env = dict(
        os.environ,
        JUPYTER_RUNTIME_DIR=str(runtime_dir),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path_factory.mktemp("lab-user-settings")),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path_factory.mktemp("lab-workspaces")),
        MNIST_GUIDE_ROOT=str(ROOT),
    )
    log_path = runtime_dir / "jupyter.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [*command, *server_flags],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(base_url, token, server, log_path)
        yield {"url": base_url, "token": token, "workdir": workdir}
    finally:
        _shutdown(server, base_url, token)


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
        instance = playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield instance
        finally:
            instance.close()


# Reads the open notebook through window.jupyterapp (exposed by --LabApp.expose_app_in_browser).
_PROGRESS_JS = """
() => {
  const widget = window.jupyterapp.shell.currentWidget;
  const cells = [...widget.content.model.cells].filter(c => c.type === 'code' && c.sharedModel.getSource().trim());
  const failed = cells.some(c => { for (let i = 0; i < c.outputs.length; i++)
                                   { if (c.outputs.get(i).type === 'error') return true; } return false; });
  const kernel = widget.sessionContext.session && widget.sessionContext.session.kernel;
  return {waiting: cells.filter(c => c.executionCount === null).length, failed,
          status: kernel ? kernel.status : 'none', quietS: (Date.now() - window.__courseLastMessage) / 1000};
}
"""

_NOTEBOOK_STATE_JS = """
() => {
  const widget = window.jupyterapp.shell.currentWidget;
  const cells = [];
  let index = -1;
  for (const cell of widget.content.model.cells) {
    index++;
    if (cell.type !== 'code') continue;
    const outputs = [];
    for (let i = 0; i < cell.outputs.length; i++) outputs.push(cell.outputs.get(i).toJSON());
    cells.push({index, count: cell.executionCount, source: cell.sharedModel.getSource(), outputs});
  }
  const kernel = widget.sessionContext.session && widget.sessionContext.session.kernel;
  return {status: kernel ? kernel.status : 'none', cells};
}
"""

# Per cell of the open notebook: decoded images and progress-bar widgets drawn in its output area.
_RENDERED_JS = """
() => window.jupyterapp.shell.currentWidget.content.widgets.map(cell => ({
  images: [...cell.node.querySelectorAll('.jp-OutputArea .jp-RenderedImage img')]
          .filter(img => img.complete && img.naturalWidth > 0).length,
  bars: cell.node.querySelectorAll('.jp-OutputArea .widget-hbox .widget-hprogress').length,
  text: (cell.node.querySelector('.jp-OutputArea') || {textContent: ''}).textContent.slice(0, 4000),
}))
"""

# Whether every image in one cell's output area has decoded (the browser draws only what is in view).
_CELL_IMAGES_DRAWN_JS = """
([i, n]) => [...window.jupyterapp.shell.currentWidget.content.widgets[i].node
              .querySelectorAll('.jp-OutputArea .jp-RenderedImage img')]
            .filter(img => img.complete && img.naturalWidth > 0).length >= n
"""


def _stored_expectations(name: str) -> dict:
    """What the stored notebook shows: images, and the cells whose progress bars are widgets."""
    notebook = json.loads((ROOT / "notebooks" / name).read_text(encoding="utf-8"))
    images, widget_cells = 0, {}
    for index, cell in enumerate(notebook["cells"]):
        outputs = cell.get("outputs", []) if cell["cell_type"] == "code" else []
        images += sum("image/png" in out.get("data", {}) for out in outputs)
        widgets = sum(WIDGET_MIME in out.get("data", {}) for out in outputs)
        if widgets:
            widget_cells[index] = widgets
    return {"images": images, "widget_cells": widget_cells}


def _open_notebook(page, jupyter_lab, name: str) -> None:
    # `jupyter lab ... notebooks/00_start_here.ipynb` serves the notebooks folder as its root.
    # A workspace of its own per notebook, so the page restores no tabs from an earlier test.
    workspace = Path(name).stem.replace("_", "-")
    page.goto(
        f"{jupyter_lab['url']}/lab/workspaces/{workspace}/tree/{name}?reset&token={jupyter_lab['token']}"
    )
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


def _run_all(page, name: str) -> dict:
    """Clear every output, Run > Run All Cells, wait until every cell ran (or one failed).

    Fails when the kernel shows "Idle" for long while cells still wait (what a learner reads as stuck).
    Returns the run's time and the longest stretch the kernel showed "Idle" while cells waited.
    """
    _menu(page, "Edit", "Clear Outputs of All Cells")
    page.wait_for_function(
        "() => [...window.jupyterapp.shell.currentWidget.content.model.cells]"
        ".every(c => c.type !== 'code' || c.executionCount === null)",
        timeout=30_000,
    )
    page.evaluate(
        "() => { window.__courseLastMessage = Date.now();"
        " window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.anyMessage.connect("
        "   () => { window.__courseLastMessage = Date.now(); }); }"
    )
    start = time.monotonic()
    _menu(page, "Run", "Run All Cells")
    idle_since, longest_idle = None, 0.0
    while True:
        page.wait_for_timeout(1000)
        now = time.monotonic()
        progress = page.evaluate(_PROGRESS_JS)
        if progress["waiting"] and progress["status"] == "idle":
            idle_since = idle_since or now
            longest_idle = max(longest_idle, now - idle_since)
        else:
            idle_since = None
        if progress["failed"] or not progress["waiting"]:
            break
        if longest_idle >= LONGEST_IDLE_S:
            page.screenshot(path=str(SHOTS / f"{Path(name).stem}_idle.png"))
            pytest.fail(
                f"{name}: the status bar has said 'Idle' for {longest_idle:.0f} s while {progress['waiting']} cells "
                "wait to run (the kernel still working, a learner sees a notebook stuck at [*]); does the "
                "README's command give JupyterLab the course's settings (jupyterlab-settings/)?"
            )
        if progress["quietS"] > STALL_S or now - start > RUN_TIMEOUT_S:
            page.screenshot(path=str(SHOTS / f"{Path(name).stem}_stuck.png"))
            pytest.fail(
                f"{name}: {progress['waiting']} cells still waiting after {now - start:.0f} s, the kernel "
                f"silent for {progress['quietS']:.0f} s and shown as {progress['status']!r}"
            )
    seconds = time.monotonic() - start
    # The kernel goes idle after the last cell; then let the last outputs and widgets render.
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
        timeout=60_000,
    )
    page.wait_for_timeout(1500)
    return {"seconds": seconds, "longest_idle_while_waiting_s": longest_idle}


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).first.click()


def _scroll_to_cell(page, index: int) -> None:
    page.evaluate(
        "i => { const notebook = window.jupyterapp.shell.currentWidget.content;"
        " notebook.activeCellIndex = i; return notebook.scrollToItem(i, 'start'); }",
        index,
    )
    page.wait_for_timeout(500)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_run_all_in_jupyterlab(name, jupyter_lab, browser, request):
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    stem = Path(name).stem
    expected = _stored_expectations(name)
    if not _in_default_run(ROOT / "notebooks" / name):
        request.getfixturevalue("course_checkpoint")  # the notebooks after the CNN one load the trained model
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _open_notebook(page, jupyter_lab, name)
        run = _run_all(page, name)
        page.screenshot(path=str(SHOTS / f"{stem}.png"))
        state = page.evaluate(_NOTEBOOK_STATE_JS)
        rendered = page.evaluate(_RENDERED_JS)

        errors = [
            (cell["source"][:80], out.get("ename"), out.get("evalue"))
            for cell in state["cells"]
            for out in cell["outputs"]
            if out.get("output_type") == "error"
        ]
        assert not errors, f"{name}: cells raised in JupyterLab: {errors}"
        never_ran = [
            cell["source"][:80] for cell in state["cells"] if cell["count"] is None and cell["source"].strip()
        ]
        assert not never_ran, f"{name}: cells never ran: {never_ran}"
        assert state["status"] == "idle"
        shown = "\n".join(cell["text"] for cell in rendered)
        assert "Traceback" not in shown, f"{name}: a traceback is shown"
        assert "IProgress not found" not in shown, f"{name}: tqdm fell back to text (ipywidgets missing?)"

        images_per_cell = {
            cell["index"]: sum("image/png" in out.get("data", {}) for out in cell["outputs"])
            for cell in state["cells"]
        }
        live_images = sum(images_per_cell.values())
        figure_cells = [index for index, count in images_per_cell.items() if count]
        drawn_images = 0
        # Scroll to each figure, as a reader does: the browser draws what is in view.
        for index in figure_cells:
            _scroll_to_cell(page, index)
            try:
                page.wait_for_function(
                    _CELL_IMAGES_DRAWN_JS, arg=[index, images_per_cell[index]], timeout=15_000
                )
            except PlaywrightTimeout:  # counted: the assertion below names the shortfall
                pass
            drawn_images += page.evaluate(_RENDERED_JS)[index]["images"]
            if index == figure_cells[0]:
                page.screenshot(path=str(SHOTS / f"{stem}_figure.png"))
        assert live_images == expected["images"], (
            f"{name}: Run All made {live_images} figures, the stored notebook has {expected['images']}"
        )
        assert drawn_images == live_images, (
            f"{name}: {live_images} figures made, {drawn_images} drawn as images"
        )

        live_widgets = {
            cell["index"]: sum(WIDGET_MIME in out.get("data", {}) for out in cell["outputs"])
            for cell in state["cells"]
        }
        for index, count in expected["widget_cells"].items():
            assert live_widgets.get(index) == count, (
                f"{name}: cell {index} should show {count} progress-bar widgets, its outputs have {live_widgets.get(index)}"
            )
            assert rendered[index]["bars"] == count, (
                f"{name}: cell {index} should draw {count} progress bars, it draws {rendered[index]['bars']}; "
                f"its output area shows:\n{rendered[index]['text'][:2000]}"
            )
            assert "100%" in rendered[index]["text"], (
                f"{name}: cell {index}'s progress bars did not reach 100 %"
            )

        if expected["widget_cells"]:
            _scroll_to_cell(page, min(expected["widget_cells"]))
            page.screenshot(path=str(SHOTS / f"{stem}_progress.png"))
        summary = {
            "notebook": name,
            "run_all_s": round(run["seconds"], 1),
            "longest_idle_while_waiting_s": round(run["longest_idle_while_waiting_s"], 1),
            "code_cells": len(state["cells"]),
            "figures": drawn_images,
            "progress_bars": sum(cell["bars"] for cell in rendered),
        }
        (SHOTS / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
    finally:
        try:  # stop this notebook's kernel, so that the next notebook does not share the cores with it
            page.evaluate(
                "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " return w && w.sessionContext ? w.sessionContext.shutdown() : null; }"
            )
        except PlaywrightError:
            pass
        page.close()

"""The drawing page as a person uses it: `mnist-guide serve`, headless Chromium, digits drawn with the mouse.

Starts the server on a free loopback port, opens `/`, draws a 1, a 0, a 7 and a 4 stroke by stroke,
and checks that each is read correctly, that the ten probability bars and the 28 x 28 preview show
the server's answer, and that Clear empties everything. Screenshots go to artifacts/browser/.
Skips when Chromium is missing, except under CI=true.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mnist_guide import serve

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "artifacts" / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def ellipse(cx: float, cy: float, rx: float, ry: float, start: float = -0.5 * math.pi, points: int = 40):
    """Points round an ellipse, starting at angle `start` and going anticlockwise on the screen (as a 0 is drawn)."""
    return [(cx + rx * math.cos(start - 2 * math.pi * i / points), cy + ry * math.sin(start - 2 * math.pi * i / points))
            for i in range(points + 2)]


#: Each digit as a person draws it in the 280 x 280 area: a list of strokes, each a list of points.
DIGITS = {
    1: [[(150, 45), (146, 110), (141, 175), (137, 235)]],
    0: [ellipse(140, 140, 62, 92)],
    7: [[(78, 62), (140, 60), (205, 58), (175, 120), (145, 180), (122, 238)]],
    4: [[(160, 40), (120, 100), (80, 160), (150, 160), (215, 158)], [(175, 95), (172, 170), (170, 245)]],
}


@pytest.fixture(scope="module")
def server(exported_files: dict[str, Path], chromium):
    running = serve.ServerProcess.start(exported_files["export"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def page(server, chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 620})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.goto(f"{server.url}/")
            page.wait_for_selector("#bars li[data-digit='9']")
            yield page
            assert not errors, f"the page logged errors: {errors}"
        finally:
            browser.close()


def draw(page, strokes) -> dict:
    """Draw `strokes` with the mouse (down, moves, up) and return the server's answer to the last one."""
    box = page.locator("#pad").bounding_box()
    scale = box["width"] / 280

    def at(x: float, y: float) -> tuple[float, float]:
        return box["x"] + x * scale, box["y"] + y * scale

    sent = []

    def record(request) -> None:
        if request.url.endswith("/predict"):
            sent.append(request)

    page.on("request", record)
    try:
        for stroke in strokes:
            page.mouse.move(*at(*stroke[0]))
            page.mouse.down()
            for x, y in stroke[1:]:
                page.mouse.move(*at(x, y), steps=4)
            page.mouse.up()  # the end of each stroke posts the canvas; the page shows the answer to the latest
        page.wait_for_selector("#result[data-state='shown']")
    finally:
        page.remove_listener("request", record)
    assert len(sent) == len(strokes), f"{len(strokes)} strokes should post {len(strokes)} times, not {len(sent)}"
    answer = sent[-1].response()
    assert answer.status == 200, answer.text()
    return answer.json()


# What the page shows: the digit, each bar's width as a fraction of its track, the preview's grey levels.
_SHOWN_JS = """
() => {
  const rows = [...document.querySelectorAll('#bars li')];
  const preview = document.getElementById('preview').getContext('2d').getImageData(0, 0, 28, 28).data;
  return {
    digit: document.getElementById('digit').textContent,
    top: rows.filter(row => row.classList.contains('top')).map(row => row.dataset.digit),
    bars: rows.map(row => row.querySelector('.bar').getBoundingClientRect().width
                          / row.querySelector('.track').getBoundingClientRect().width),
    preview: Array.from({length: 784}, (_, i) => preview[4 * i + 3] === 0 ? -1 : preview[4 * i]),
    inked: (() => {
      const pad = document.getElementById('pad');
      const data = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data;
      let count = 0;
      for (let i = 3; i < data.length; i += 4) count += data[i] > 0;
      return count;
    })(),
  };
}
"""


@pytest.mark.parametrize("digit", list(DIGITS))
def test_a_digit_drawn_with_the_mouse_is_read(page, digit):
    page.click("#clear")
    answer = draw(page, DIGITS[digit])
    shown = page.evaluate(_SHOWN_JS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"drawing_page_{digit}.png"))

    assert answer["digit"] == digit, f"a {digit} drawn with the mouse was read as {answer['digit']}: {answer['probabilities']}"
    assert shown["digit"] == str(digit) and shown["top"] == [str(digit)]
    assert shown["inked"] > 1000, "the strokes should be on the canvas"
    # The bars are the probabilities: the tallest is the digit read, and together they fill one track.
    assert shown["bars"] == pytest.approx(answer["probabilities"], abs=0.02)
    assert sum(shown["bars"]) == pytest.approx(1, abs=0.03)
    # The preview holds the 28 x 28 grey levels the model was given: a digit in MNIST's layout.
    expected = [value for row in answer["pixels"] for value in row]
    assert max(abs(a - b) for a, b in zip(shown["preview"], expected, strict=True)) <= 0.5 + 1e-6
    assert max(expected) == 255 and sum(value > 128 for value in expected) >= 20


def test_clear_empties_the_canvas_and_the_answer(page):
    draw(page, DIGITS[7])
    page.click("#clear")
    shown = page.evaluate(_SHOWN_JS)
    assert shown["inked"] == 0, "the canvas should be blank after Clear"
    assert shown["digit"] == "–" and shown["top"] == []
    assert shown["bars"] == [0] * 10
    assert set(shown["preview"]) == {-1}, "the preview should be empty"
    assert page.locator("#status").inner_text() == "Draw a digit."
    page.screenshot(path=str(SCREENSHOTS / "drawing_page_cleared.png"))

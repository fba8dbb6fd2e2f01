"""Every notebook opens and closes the same way (GUIDE.md section 1), and its times are computed."""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import notebook_times  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CLOSING = ["## Summary", "## Words to know", "## Check your understanding", "## Try it yourself", "## Exercises", "## Further reading"]


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def markdown(cell: dict) -> str:
    return "".join(cell["source"]) if cell["cell_type"] == "markdown" else ""


def section(notebook: dict, heading: str) -> list[dict]:
    """The cells from the one holding `heading` up to the next level-2 heading (the heading's text first)."""
    cells, inside = [], False
    for cell in notebook["cells"]:
        text = markdown(cell)
        heads = [line for line in text.splitlines() if line.startswith("## ")]
        if inside and heads:
            before = text.split(heads[0])[0]
            if before.strip():
                cells.append({"cell_type": "markdown", "source": [before]})
            break
        if heading in heads:
            inside = True
            cell = {"cell_type": "markdown", "source": [text.split(heading, 1)[1]]}
        if inside:
            cells.append(cell)
    return cells


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_opening_says_what_you_learn_what_you_need_and_how_long(path):
    notebook = load(path)
    opening = markdown(notebook["cells"][0])
    assert opening.startswith(f"# {path.stem[:2]} · "), "the first cell is the title"
    assert "you will be able to" in opening, "the opening says what the learner will be able to do"
    assert re.search(r"^\*\*Prerequisites:\*\* \S", opening, re.MULTILINE), "a '**Prerequisites:** ...' line"
    assert notebook_times.time_line(notebook) in opening, "the time line is stale: run tools/notebook_times.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_closing_sections_come_in_order(path):
    heads = [line for cell in load(path)["cells"] for line in markdown(cell).splitlines() if line.startswith("## ")]
    assert heads[-len(CLOSING):] == CLOSING, f"the notebook closes with {CLOSING}; it has {heads[-len(CLOSING):]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_words_to_know_are_defined_one_line_each(path):
    text = "".join(markdown(c) for c in section(load(path), "## Words to know"))
    entries = re.findall(r"^- \*\*[^*]+\*\*[:—–-] ?\S.*$", text, re.MULTILINE)
    assert len(entries) >= 5, "at least five '- **term**: definition' lines"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_question_has_a_hidden_answer(path):
    text = "".join(markdown(c) for c in section(load(path), "## Check your understanding"))
    questions = re.findall(r"^\d+\. \S", text, re.MULTILINE)
    answers = re.findall(r"<details>\s*<summary>[^<]*</summary>(.*?)</details>", text, re.DOTALL)
    assert 5 <= len(questions) <= 10, f"5 to 10 numbered questions; found {len(questions)}"
    assert len(answers) == len(questions), f"{len(questions)} questions, {len(answers)} <details> answers"
    assert all(len(answer.split()) >= 5 for answer in answers), "every answer says something (5 words or more)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_try_it_yourself_has_a_starting_cell(path):
    cells = section(load(path), "## Try it yourself")
    assert any(cell["cell_type"] == "code" and "".join(cell["source"]).strip() for cell in cells), "a code cell to start from"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_further_reading_points_to_pytorch_and_the_forum(path):
    text = "".join(markdown(c) for c in section(load(path), "## Further reading"))
    assert re.search(r"https://(docs\.)?pytorch\.org/(docs|tutorials)/", text), "a pytorch.org docs or tutorials link"
    assert "https://discuss.pytorch.org" in text, "the PyTorch forum"


def test_readme_run_times_are_the_recorded_ones():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        cell = notebook_times.readme_cell(load(path))
        assert re.search(rf"^\| \[{path.stem}\]\(notebooks/{path.name}\) \|.*\| {cell} \|$", readme, re.MULTILINE), (
            f"README.md: {path.name} should say {cell}: run tools/notebook_times.py"
        )

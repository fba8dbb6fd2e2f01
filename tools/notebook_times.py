"""Reading and run times of the notebooks, computed from the files themselves.

Run after recording the outputs (`jupyter nbconvert --execute --inplace`): it rewrites the
`*Time: ...*` line of each notebook's opening cell and the run-time column of README.md.
`tests/test_notebook_structure.py` checks that both agree with what this computes.

    python tools/notebook_times.py notebooks/*.ipynb
"""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import datetime
from pathlib import Path

WORDS_PER_MINUTE = 200
TIME_LINE = re.compile(r"^\*Time: .*\*$", re.MULTILINE)
README = Path(__file__).resolve().parents[1] / "README.md"


def reading_minutes(notebook: dict) -> int:
    """Words of markdown and code at 200 words a minute, rounded up."""
    words = sum(len("".join(cell["source"]).split()) for cell in notebook["cells"])
    return max(1, math.ceil(words / WORDS_PER_MINUTE))


def run_seconds(notebook: dict) -> float:
    """Seconds from the first code cell's start to the last one's reply, as recorded by nbclient."""
    stamps = [cell.get("metadata", {}).get("execution", {}) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    if not stamps or not all("iopub.execute_input" in s and "shell.execute_reply" in s for s in stamps):
        raise ValueError("some code cells carry no execution times: record the notebook with nbconvert --execute")
    start = min(datetime.fromisoformat(s["iopub.execute_input"].replace("Z", "+00:00")) for s in stamps)
    end = max(datetime.fromisoformat(s["shell.execute_reply"].replace("Z", "+00:00")) for s in stamps)
    return (end - start).total_seconds()


def rounded_seconds(seconds: float) -> int:
    """To the nearest 5 s below 100 s, to the nearest 10 s above; at least 5 s."""
    step = 5 if seconds < 100 else 10
    return max(5, step * round(seconds / step))


def time_line(notebook: dict) -> str:
    """The opening's time line, e.g. `*Time: about 15 minutes to read; 70 s to run on 2 CPU cores.*`."""
    return (
        f"*Time: about {reading_minutes(notebook)} minutes to read; {rounded_seconds(run_seconds(notebook))} s "
        "to run on 2 idle CPU cores (measured when the outputs were recorded).*"
    )


def update(path: Path) -> str:
    """Rewrite the time line of one notebook and return it."""
    notebook = json.loads(path.read_text())
    opening = "".join(notebook["cells"][0]["source"])
    if not TIME_LINE.search(opening):
        raise ValueError(f"{path}: the first cell has no '*Time: ...*' line")
    line = time_line(notebook)
    notebook["cells"][0]["source"] = TIME_LINE.sub(line.replace("\\", "\\\\"), opening).splitlines(keepends=True)
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return line


def readme_cell(notebook: dict) -> str:
    """The README table's run-time cell for one notebook."""
    return f"{rounded_seconds(run_seconds(notebook))} s"


def update_readme(paths: list[Path]) -> None:
    """Rewrite the last column of the README's notebook table for the given notebooks."""
    text = README.read_text()
    for path in paths:
        cell = readme_cell(json.loads(path.read_text()))
        row = re.compile(rf"^(\| \[{re.escape(path.stem)}\]\(notebooks/{re.escape(path.name)}\) \|.*\| )[^|]*( \|)$", re.MULTILINE)
        text, count = row.subn(lambda m, cell=cell: m.group(1) + cell + m.group(2), text)
        if count != 1:
            raise ValueError(f"README.md: no table row for {path.name}")
    README.write_text(text)


if __name__ == "__main__":
    notebooks = [Path(arg) for arg in sys.argv[1:]]
    for notebook_path in notebooks:
        print(f"{notebook_path.name}: {update(notebook_path)}")
    update_readme(notebooks)

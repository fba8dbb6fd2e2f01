"""Which notebook uses which helper of the package, read from the notebooks' code (so it cannot drift).

It rewrites the table between the `taught-in` markers of README.md; `tests/test_taught_in.py`
fails when the table is stale.

    python tools/taught_in.py
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN, END = "<!-- taught-in: begin (tools/taught_in.py writes this table) -->", "<!-- taught-in: end -->"


def helpers_used(code: str) -> set[str]:
    """`module.name` of every `mnist_guide` helper the code imports by name or reaches through its module."""
    used, modules, nodes = set(), {}, list(ast.walk(ast.parse(code)))
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnist_guide"):
            for alias in node.names:
                if node.module == "mnist_guide":  # `from mnist_guide import data`: a module
                    modules[alias.asname or alias.name] = alias.name
                else:
                    used.add(f"{node.module.removeprefix('mnist_guide.')}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mnist_guide.") and alias.asname:
                    modules[alias.asname] = alias.name.removeprefix("mnist_guide.")
    for node in nodes:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            used.add(f"{modules[node.value.id]}.{node.attr}")
    return {name for name in used if not name.startswith("solutions")}


def notebook_code(path: Path) -> str:
    """The notebook's code cells, without IPython's `%` and `!` lines."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    lines = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code").splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def table() -> str:
    """The Markdown table: one row per notebook, the helpers it uses grouped by module."""
    rows = ["| notebook | helpers it uses from `mnist_guide` |", "| --- | --- |"]
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        by_module: dict[str, list[str]] = {}
        for name in sorted(helpers_used(notebook_code(path))):
            module, helper = name.split(".", 1)
            by_module.setdefault(module, []).append(f"`{helper}`")
        cell = "; ".join(f"{module}: {', '.join(names)}" for module, names in by_module.items()) or "none"
        rows.append(f"| [{path.stem}](notebooks/{path.name}) | {cell} |")
    return "\n".join(rows)


def rewrite(text: str) -> str:
    """README's text with the table between the markers replaced by `table()`."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"README.md has no {BEGIN} ... {END} markers")
    return pattern.sub(lambda _: f"{BEGIN}\n{table()}\n{END}", text)


if __name__ == "__main__":
    README.write_text(rewrite(README.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"rewrote the helper table of {README.name}")

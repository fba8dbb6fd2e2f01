"""Every "Taught in notebooks/NN_name.ipynb." line of the package names a notebook that really uses the helper."""

import importlib
import inspect
import json
import pkgutil
import re
from functools import cache
from pathlib import Path

import pytest

import mnist_guide

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TAUGHT_IN = re.compile(r"Taught in (notebooks/[\w.-]+\.ipynb)")


@cache
def notebook_code(relative: str) -> str:
    cells = json.loads((NOTEBOOKS.parent / relative).read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")


def helpers_with_a_taught_in_line() -> list[tuple[str, str, str]]:
    found = []
    for info in pkgutil.walk_packages(mnist_guide.__path__, "mnist_guide."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if getattr(value, "__module__", None) != module.__name__ or not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            for notebook in TAUGHT_IN.findall(inspect.getdoc(value) or ""):
                found.append((info.name, name, notebook))
    return found


HELPERS = helpers_with_a_taught_in_line()


def test_the_package_names_where_its_helpers_are_taught():
    assert len(HELPERS) > 40


@pytest.mark.parametrize("module, name, notebook", HELPERS, ids=[f"{m}.{n}" for m, n, _ in HELPERS])
def test_the_named_notebook_uses_the_helper(module, name, notebook):
    assert (NOTEBOOKS.parent / notebook).is_file(), f"{module}.{name}: {notebook} does not exist"
    assert re.search(rf"\b{re.escape(name)}\b", notebook_code(notebook)), f"{notebook} never uses {module}.{name}"

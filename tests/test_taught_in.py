"""README's table of the helpers each notebook uses is what the notebooks' code says (tools/taught_in.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import taught_in  # noqa: E402


def test_the_readme_table_is_current():
    readme = taught_in.README.read_text(encoding="utf-8")
    assert taught_in.rewrite(readme) == readme, "README's helper table is stale: run python tools/taught_in.py"


def test_helpers_are_found_by_name_and_through_their_module():
    code = "from mnist_guide.data import make_loaders as ml\nfrom mnist_guide import export\nexport.load_deployed(p)\n"
    assert taught_in.helpers_used(code) == {"data.make_loaders", "export.load_deployed"}


def test_every_notebook_uses_the_package():
    table = taught_in.table()
    assert "| none |" not in table
    assert table.count("notebooks/") == len(list((taught_in.ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))

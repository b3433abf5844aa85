"""The README's install instructions keep up with pyproject.toml: every extra listed with what it enables."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_every_extra_is_documented():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    readme = (ROOT / "README.md").read_text()
    # only the extras table: the lines from its header to the first line that is not a table row
    table = re.search(r"^\| extra \| installs \| enables \|\n((?:\|.*\n)+)", readme, re.M)
    assert table, "README.md has no `| extra | installs | enables |` table"
    rows = dict(re.findall(r"^\| `([\w-]+)` \| ([^|]+) \|", table.group(1), re.M))
    assert set(rows) == set(extras)
    for name, packages in extras.items():  # the table says what each one installs
        for package in packages:
            assert package in rows[name], (name, package)


def test_cpu_only_torch_and_llm_install_are_explained():
    readme = (ROOT / "README.md").read_text()
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in readme
    assert '".[llm' in (ROOT / "docs" / "llm.md").read_text()

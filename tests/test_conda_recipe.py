"""The conda recipe renders and its dependencies match pyproject's."""

import pathlib
import re
import tomllib

import jinja2
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE = ROOT / "conda-recipe" / "meta.yaml"

# PyPI name -> conda-forge name, where they differ.
CONDA_NAME = {"torch": "pytorch", "openmmtorch": "openmm-torch", "openmmml": "openmm-ml"}


def render_recipe() -> dict:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    text = env.from_string(RECIPE.read_text()).render(PYTHON="python")
    return yaml.safe_load(text)


def split_requirement(req: str) -> tuple[str, str]:
    """'numpy >=1.24' or 'numpy>=1.24' -> ('numpy', '>=1.24')."""
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    return m.group(1).lower(), m.group(2).replace(" ", "")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_recipe_renders_as_noarch_python():
    meta = render_recipe()
    assert meta["build"]["noarch"] == "python"
    assert meta["package"]["version"] == pyproject()["project"]["version"]
    assert "openmm_cmt" in meta["test"]["imports"]
    assert any("pytest" in c for c in meta["test"]["commands"])


def test_run_dependencies_match_pyproject():
    meta = render_recipe()
    conda = dict(split_requirement(r) for r in meta["requirements"]["run"])
    conda.pop("python")
    project = pyproject()["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["torchforce"]]
    expected = {}
    for req in wanted:
        name, spec = split_requirement(req)
        expected[CONDA_NAME.get(name, name)] = spec
    assert conda == expected


def test_drift_is_detected(monkeypatch):
    """The comparison above must fail when the two lists disagree."""
    original = RECIPE.read_text()
    drifted = original.replace("numpy >=1.24", "numpy >=1.20")
    assert drifted != original
    real_read_text = pathlib.Path.read_text
    monkeypatch.setattr(
        pathlib.Path, "read_text", lambda self, *a, **k: drifted if self == RECIPE else real_read_text(self, *a, **k)
    )
    with pytest.raises(AssertionError):
        test_run_dependencies_match_pyproject()

"""Every package the code imports is declared in pyproject.toml: a module-level import of the
package's modules in `dependencies`, one imported only inside a function (an optional path:
int8 weights, gs://, plots) at least in an extra."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)).lower()


CORE = {_name(r) for r in PYPROJECT["dependencies"]}
EXTRAS = {extra: {_name(r) for r in reqs} for extra, reqs in PYPROJECT["optional-dependencies"].items()}


@functools.cache
def third_party_imports() -> dict[str, dict[str, str]]:
    """{"module": {top-level name: a file}, "function": {...}} over the package's imports."""
    found: dict[str, dict[str, str]] = {"module": {}, "function": {}}
    for path in sorted((ROOT / "recap_jax").rglob("*.py")):
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            for name in (n.split(".")[0] for n in names):
                if name != "recap_jax" and name not in sys.stdlib_module_names:
                    kind = "module" if id(node) in top else "function"
                    found[kind].setdefault(name, str(path.relative_to(ROOT)))
    return found


@functools.cache
def _packages() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions(module: str) -> set[str]:
    return {_name(d) for d in _packages().get(module, [module])}


def test_module_level_imports_are_core_dependencies():
    imports = third_party_imports()["module"]
    missing = {m: f for m, f in imports.items() if not _distributions(m) & CORE}
    assert not missing, f"imported at module level but not in [project] dependencies: {missing}"


def test_function_level_imports_are_declared():
    imports = third_party_imports()["function"]
    declared = CORE.union(*EXTRAS.values())
    missing = {m: f for m, f in imports.items() if not _distributions(m) & declared}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_plots_are_an_extra_the_tests_install():
    assert "matplotlib" not in CORE and "matplotlib" in EXTRAS["plots"] and "matplotlib" in EXTRAS["test"]
    assert "matplotlib" not in third_party_imports()["module"]  # imported only when a plot is drawn


def test_the_name_rule_matches_pep_503():
    assert _name("orbax-checkpoint>=0.9") == "orbax-checkpoint" and _name("jax[tpu]") == "jax"
    assert _name("ml_collections>=0.1.1") == "ml-collections" and _name("Jinja2") == "jinja2"


def test_a_missing_plots_extra_is_named_in_one_line(monkeypatch):
    import pytest

    from recap_jax.analysis import plots
    from recap_jax.errors import UserError

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets without the extra
    with pytest.raises(UserError, match=r"analyze draws its plots with matplotlib.*recap_jax\[plots\]"):
        plots.pyplot("analyze")

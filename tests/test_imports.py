"""The package's imports run one way: no circle, and no import from a lower layer to a higher one.

Every `import` / `from ... import` of a `recap_jax` module counts, at module level or inside a
function (a function-level import still couples the two modules; it only hides a circle). Layers,
highest first:

    commands (recap_jax/<command>.py)
      -> the whole-paper pipeline (mini_paper/)
        -> trainers and jobs (the CLIP and captioner trainers, the caption job, planning, analysis, dit/)
          -> jitted steps, model loading and evaluation (clip/train_step, clip/evaluate, metrics/, ...)
            -> models and data (models/, data/, decoding/, conversion/, ...)
              -> errors.py

A module may import its own layer or any layer below it. Its layer is that of the longest prefix
of its dotted name in `LAYERS`; a top-level module not listed there is a command. A new package
gets a row here (the failure message names the modules without one).
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "recap_jax"

BASE, MODELS_AND_DATA, STEPS_AND_EVALUATION, TRAINERS_AND_JOBS, PIPELINE, COMMANDS = range(6)
LAYER_NAMES = ("errors", "models and data", "steps, model loading and evaluation", "trainers and jobs",
               "pipeline", "commands")
LAYERS = {
    "recap_jax": BASE,  # the package's __init__
    "recap_jax.errors": BASE,
    # Models, their weights' formats, data formats and readers, decoding, config defaults.
    # cli.py: what commands share; it starts jax.distributed (parallel/), config files parse their
    # arguments with it (clip/clipa.py).
    "recap_jax.cli": MODELS_AND_DATA,
    "recap_jax.progress": MODELS_AND_DATA,  # the one progress reporter of every long command
    "recap_jax.models": MODELS_AND_DATA,
    "recap_jax.data": MODELS_AND_DATA,
    "recap_jax.preprocess": MODELS_AND_DATA,
    "recap_jax.parallel": MODELS_AND_DATA,
    "recap_jax.kernels": MODELS_AND_DATA,
    "recap_jax.conversion": MODELS_AND_DATA,
    "recap_jax.decoding": MODELS_AND_DATA,
    "recap_jax.release": MODELS_AND_DATA,
    "recap_jax.clip": MODELS_AND_DATA,  # clip/model.py, data.py, loss.py, hf_weights.py, ...
    # Pure jitted steps over a model, loading a model, and evaluating one.
    "recap_jax.clip.train_step": STEPS_AND_EVALUATION,
    "recap_jax.clip.model_loading": STEPS_AND_EVALUATION,
    "recap_jax.clip.evaluate": STEPS_AND_EVALUATION,
    "recap_jax.clip.retrieval_job": STEPS_AND_EVALUATION,
    "recap_jax.clip.suite": STEPS_AND_EVALUATION,
    "recap_jax.clip.folders": STEPS_AND_EVALUATION,  # convert_clip's reading and writing of whole models
    "recap_jax.finetuning.loss": STEPS_AND_EVALUATION,
    "recap_jax.finetuning.step": STEPS_AND_EVALUATION,
    "recap_jax.captioning.model_loading": STEPS_AND_EVALUATION,
    "recap_jax.captioning.param_reads": STEPS_AND_EVALUATION,
    "recap_jax.metrics": STEPS_AND_EVALUATION,
    # The one training loop and what it is made of (optimizer, checkpoints, metrics): every trainer
    # runs on it, and jitted steps and model loading use its optimizer and checkpoint format.
    "recap_jax.training": STEPS_AND_EVALUATION,
    # Trainers (their config defaults, data and loops), the caption job, the plan, the dataset analysis.
    "recap_jax.clip.trainer": TRAINERS_AND_JOBS,
    # A trainer's config fields and recipes (they may share the trainers' optimizer fields).
    "recap_jax.clip.defaults": TRAINERS_AND_JOBS,
    "recap_jax.clip.clipa": TRAINERS_AND_JOBS,
    "recap_jax.clip.stage_init": TRAINERS_AND_JOBS,
    "recap_jax.clip.schedule": TRAINERS_AND_JOBS,
    "recap_jax.finetuning": TRAINERS_AND_JOBS,
    "recap_jax.dit": TRAINERS_AND_JOBS,
    "recap_jax.captioning": TRAINERS_AND_JOBS,
    "recap_jax.planning": TRAINERS_AND_JOBS,
    "recap_jax.analysis": TRAINERS_AND_JOBS,
    "recap_jax.mini_paper": PIPELINE,
}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, source: str, is_package: bool = False) -> Iterator[tuple[str, int]]:
    """(recap_jax module, line) for every import in a module's source, function-level ones included."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from recap_jax.clip import data` imports the module recap_jax.clip.data.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "recap_jax":
                yield target, node.lineno


GRAPH: dict[str, dict[str, int]] = {name: {} for name in MODULES}  # module -> {imported module: line}
for _name, _path in MODULES.items():
    for _target, _line in imported(_name, _path.read_text(), _path.name == "__init__.py"):
        if _target != _name:
            GRAPH[_name].setdefault(_target, _line)


def layer(name: str) -> int | None:
    """The layer of the longest prefix of `name` in LAYERS; a top-level module (not a package)
    without an entry of its own is a command."""
    path = MODULES.get(name)
    if name.count(".") == 1 and name not in LAYERS and path is not None and path.name != "__init__.py":
        return COMMANDS
    parts = name.split(".")
    prefixes = (".".join(parts[:i]) for i in range(len(parts), 0, -1))
    return next((LAYERS[p] for p in prefixes if p in LAYERS), None)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one node: each is one or more circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _edges(modules: set[str]) -> str:
    return "; ".join(f"{a} -> {b} (line {line})" for a in sorted(modules) for b, line in sorted(GRAPH[a].items())
                     if b in modules)


def _package(name: str) -> str:
    return ".".join(name.split(".")[:2])


def test_every_module_has_a_layer():
    missing = sorted(name for name in MODULES if layer(name) is None)
    assert not missing, f"modules without a layer (add their package to LAYERS in {__file__}): {missing}"


def test_every_import_names_a_module_of_the_package():
    unknown = sorted(f"{a}:{line} imports {b}" for a, targets in GRAPH.items() for b, line in targets.items()
                     if b not in MODULES)
    assert not unknown, unknown


def test_no_import_from_a_lower_layer_to_a_higher_one():
    upward = sorted(
        f"{a} ({LAYER_NAMES[layer(a)]}) imports {b} ({LAYER_NAMES[layer(b)]}) at line {line}"
        for a, targets in GRAPH.items() for b, line in targets.items()
        if b in MODULES and layer(a) is not None and layer(b) is not None and layer(b) > layer(a))
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_circle_between_modules():
    circles = strongly_connected({a: set(targets) for a, targets in GRAPH.items()})
    assert not circles, "import circles:\n" + "\n".join(_edges(set(c)) for c in circles)


def test_no_import_circle_between_packages():
    """`planning/` importing `captioning/` while `captioning/` imports `planning/` is a circle too,
    even where no two modules form one."""
    graph: dict[str, set[str]] = {}
    for a, targets in GRAPH.items():
        graph.setdefault(_package(a), set()).update(_package(b) for b in targets if _package(b) != _package(a))
    circles = strongly_connected(graph)
    messages = []
    for circle in circles:
        crossing = [f"{a} -> {b} (line {line})" for a, targets in sorted(GRAPH.items()) for b, line in targets.items()
                    if _package(a) in circle and _package(b) in circle and _package(a) != _package(b)]
        messages.append(f"{' <-> '.join(circle)}: " + "; ".join(crossing))
    assert not circles, "package circles:\n" + "\n".join(messages)


def test_the_checks_catch_what_they_should():
    """The walker sees function-level and relative imports, and the checks flag a circle and an
    upward import's layers (so a green run means something)."""
    source = "import os\nfrom recap_jax import cli\ndef f():\n    from .model import CLIP\n    from ..data import images\n"
    assert sorted(imported("recap_jax.clip.evaluate", source)) == [
        ("recap_jax.cli", 2), ("recap_jax.clip.model", 4), ("recap_jax.data.images", 5)]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("recap_jax.caption") == COMMANDS
    assert layer("recap_jax.clip.trainer") == TRAINERS_AND_JOBS > layer("recap_jax.clip.model") == MODELS_AND_DATA
    assert layer("recap_jax.clip.suite.run") == STEPS_AND_EVALUATION
    assert layer("recap_jax.errors") == BASE and layer("recap_jax.mini_paper") == PIPELINE

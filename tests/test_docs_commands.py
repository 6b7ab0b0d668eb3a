"""Every command shown in README.md and docs/*.md runs as written: its module exists, its config
file loads, and every `--config.a.b=value` names a field of that config. The commands that need
no data from outside (the demo, the CLIP run on synthetic shapes) run for real (slow)."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from configs_loader import load

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Placeholders a reader must replace, and what needs a TPU, a bucket or a download.
NOT_CPU = ("gs://", "/data/", "/models/", "~/", "BUCKET", "$", "v4_", "--distributed", "tpu/", "open_clip", "venv",
           "pip ")


def commands() -> list[tuple[str, str]]:
    """(where, command) for each `python -m recap_jax.*` command in a fenced shell block."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        # Shell blocks only: a bare ``` block is a diagram or output, and an optional tag would pair
        # one block's closing fence with the next one's opening fence (skipping every other block).
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
            block = re.sub(r"\\\n\s*", " ", block)
            for line in block.splitlines():
                line = line.split(" #", 1)[0].strip()
                for part in line.split("&&"):
                    part = part.strip()
                    if part.startswith("python -m recap_jax"):
                        found.append((doc.name, part))
    return found


COMMANDS = commands()


def test_the_docs_show_commands():
    modules = {shlex.split(c)[2] for _, c in COMMANDS}
    assert {"recap_jax.caption", "recap_jax.convert", "recap_jax.train_clip", "recap_jax.eval_retrieval"} <= modules


def _config_field_exists(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_command_names_real_modules_configs_and_fields(where, command):
    args = shlex.split(command)
    module = args[2]
    assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
    config_arg = next((a.split("=", 1)[1] if "=" in a else args[i + 1]
                       for i, a in enumerate(args) if a == "--config" or a.startswith("--config=")), None)
    if config_arg is None:
        return
    name, _, arg = config_arg.partition(":")
    assert (REPO / name).exists(), f"{where}: {name} does not exist"
    if "$" in arg:
        return  # a shell variable the reader sets (tpu/ scripts)
    config = load(pathlib.Path(name).name, arg or None)
    for a in args:
        match = re.match(r"--config\.([\w.]+)=", a)
        if match:
            assert _config_field_exists(config, match.group(1)), f"{where}: {command}: no field {match.group(1)}"


# Each distinct command once, in the order first shown (a second `export` to the same DEST is
# refused as the docs say, and a second identical run proves nothing).
def _runnable() -> list[tuple[str, str]]:
    first: dict[str, tuple[str, str]] = {}
    for where, command in COMMANDS:
        if not any(marker in command for marker in NOT_CPU):
            first.setdefault(command, (where, command))
    return list(first.values())


RUNNABLE = _runnable()


@pytest.mark.slow
def test_cpu_commands_run_as_written():
    """In the order shown (the CLIP evaluation reads what the training wrote)."""
    assert any("recap_jax.caption" in c for _, c in RUNNABLE)
    for where, command in RUNNABLE:
        args = [sys.executable, *shlex.split(command)[1:]]
        if args[2] == "recap_jax.export":  # as on a fresh checkout: export refuses to overwrite its DEST
            shutil.rmtree(REPO / args[-1], ignore_errors=True)
        if args[2] == "recap_jax.train_clip":  # its 2000 steps took 20 min at load 22 on 2 cores: 200
            args.append("--config.train.num_steps=200")
        proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=1800)
        assert proc.returncode == 0, f"{where}: {command}\n{proc.stderr[-3000:]}"


def test_ci_runs_the_readme_test_command_with_the_slow_suite():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"Run the tests.*?```bash\n(.*?)\n```", readme, flags=re.S).group(1).strip()
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1].strip()
    assert ci == block  # CI runs exactly what the README says
    assert block.endswith("python -m pytest -q && python -m pytest -q -m slow")
    # `pytest -m slow` collecting nothing would exit 5 and fail CI: there are slow tests.
    assert any("@pytest.mark.slow" in f.read_text() for f in (REPO / "tests").glob("test_*.py"))

"""The commands' error boundary: misuse ends in one line naming the field or file, exit 2, nothing written.

Each case runs a command as a user would (a subprocess) and fails at start-up, before weights load.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tiny_llava import save_tiny_llava

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(module: str, args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RECAP_DEBUG", "XLA_FLAGS")}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


def _snapshot(root: pathlib.Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


@pytest.fixture(scope="module")
def ground(tmp_path_factory):
    """One folder per module: an (empty) checkpoint folder, a file where a folder is expected, a
    CLIP workdir from another run, a tiny llava-hf checkpoint and a copy with a wrong shape."""
    root = tmp_path_factory.mktemp("cli")
    (root / "ckpt").mkdir()
    (root / "a_file").write_text("not a folder")
    (root / "tokenizer").mkdir()
    other = root / "other_run"
    other.mkdir()
    sys.path.insert(0, str(REPO))
    from recap_jax.clip.defaults import base_config
    saved = base_config()
    saved.model.embed_dim = 32
    saved.data.tokenizer = str(root / "tokenizer")
    (other / "config.json").write_text(saved.to_json_best_effort())
    hf = save_tiny_llava(root / "hf")
    bad = root / "hf_bad"
    shutil.copytree(hf, bad)
    config = json.loads((bad / "config.json").read_text())
    config["text_config"]["intermediate_size"] += 8
    (bad / "config.json").write_text(json.dumps(config))
    return root


def _cases():
    cap = ["--config", "configs/demo.py", "--config.model.checkpoint={root}/ckpt",
           "--config.model.build_tiny_if_missing=false", "--config.distributed.mode=off"]
    clip = ["--config", "configs/clip_tiny.py", "--config.data.tokenizer={root}/tokenizer"]
    ev = ["--config", "configs/clip_eval.py"]
    return [
        # (id, module, args, first stderr line starts with, path that must stay unwritten)
        ("caption-misspelled", "recap_jax.caption", cap + ["--config.output.dir={root}/o1",
                                                           "--config.decode.max_new_token=5"],
         "error: --config: no field 'max_new_token'; Did you mean \"max_new_tokens\"", "o1"),
        ("caption-no-config-file", "recap_jax.caption", ["--config", "configs/nope.py"],
         "error: --config configs/nope.py: [Errno 2] No such file", None),
        ("caption-output-is-a-file", "recap_jax.caption", cap + ["--config.output.dir={root}/a_file/out"],
         "error: {root}/a_file/out", None),
        ("caption-output-unwritable", "recap_jax.caption", cap + ["--config.output.dir=/proc/recap_out"],
         "error: /proc/recap_out", None),
        ("caption-bad-mesh", "recap_jax.caption", cap + ["--config.output.dir={root}/o2", "--config.mesh.data=3"],
         "error: mesh: axis sizes {'data': 3, 'fsdp': 1, 'tensor': 1} multiply to 3, but there are 1 devices",
         "o2"),
        ("caption-missing-checkpoint", "recap_jax.caption",
         cap + ["--config.output.dir={root}/o3", "--config.model.checkpoint={root}/nope"],
         "error: model.checkpoint: {root}/nope does not exist", "o3"),
        ("caption-config-arg", "recap_jax.caption", ["--config", "configs/v4_256.py:bucket=x"],
         "error: --config: configs/v4_256.py: unknown config argument 'bucket=x'", None),
        ("train-misspelled", "recap_jax.train_clip", clip + ["--config.workdir={root}/w1", "--config.train.num_step=3"],
         "error: --config: no field 'num_step'", "w1"),
        ("train-no-workdir", "recap_jax.train_clip", clip, "error: workdir: required", None),
        ("train-bad-mesh", "recap_jax.train_clip", clip + ["--config.workdir={root}/w2", "--config.mesh.fsdp=3"],
         "error: mesh: ", "w2"),
        ("train-no-tokenizer", "recap_jax.train_clip",
         ["--config", "configs/clip_tiny.py", "--config.workdir={root}/w3", "--config.data.tokenizer={root}/nope"],
         "error: data.tokenizer: {root}/nope is not a folder", "w3"),
        ("train-different-run", "recap_jax.train_clip", clip + ["--config.workdir={root}/other_run",
                                                               "--config.data.folders={root}/captions"],
         "error: workdir: {root}/other_run holds a different run (model.embed_dim differ", None),
        ("train-bad-model", "recap_jax.train_clip", clip + ["--config.workdir={root}/w4", "--config.model.image=Z/9"],
         "error: model.image: 'Z/9' is not one of", None),
        ("eval-misspelled", "recap_jax.eval_retrieval", ev + ["--config.batch_sise=3"],
         "error: --config: no field 'batch_sise'", None),
        ("eval-no-model", "recap_jax.eval_retrieval", ev, "error: model.checkpoint / model.hf_dir: set exactly one",
         None),
        ("eval-not-a-workdir", "recap_jax.eval_retrieval", ev + ["--config.model.checkpoint={root}/ckpt"],
         "error: model.checkpoint: {root}/ckpt has no config.json", None),
        ("eval-bad-mesh", "recap_jax.eval_retrieval", ev + ["--config.model.checkpoint={root}/ckpt",
                                                            "--config.mesh.tensor=2"], "error: mesh: ", None),
        ("convert-missing-dir", "recap_jax.convert", ["--hf_dir", "{root}/nope", "--out", "{root}/c1"],
         "error: {root}/nope: no config.json", "c1"),
        ("convert-out-exists", "recap_jax.convert", ["--hf_dir", "{root}/hf", "--out", "{root}/ckpt"],
         "error: --out {root}/ckpt exists; pass --overwrite", None),
        ("plan-bad-efficiency", "recap_jax.plan", ["--config", "configs/v4_256.py", "--efficiency=0"],
         "error: --efficiency=0.0: expected a fraction of the bound in (0, 1]", None),
        ("convert-wrong-shape", "recap_jax.convert", ["--hf_dir", "{root}/hf_bad", "--out", "{root}/c2"],
         "error: tensor ", "c2"),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_user_error_is_one_line_and_exit_2(ground, case):
    _, module, args, first_line, unwritten = case
    before = _snapshot(ground)
    result = _run(module, [a.replace("{root}", str(ground)) for a in args])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines and lines[0].startswith(first_line.replace("{root}", str(ground))), result.stderr[-3000:]
    assert len(lines) <= 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert _snapshot(ground) == before  # nothing written, nothing changed
    if unwritten:
        assert not (ground / unwritten).exists()


@pytest.mark.parametrize("module", ["recap_jax.caption", "recap_jax.train_clip", "recap_jax.eval_retrieval",
                                    "recap_jax.convert"])
def test_help_exits_0_with_readable_lines(module):
    result = _run(module, ["--help"])
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout or "--hf_dir" in result.stdout
    assert "--debug" in result.stdout
    assert not any(len(line) > 200 for line in result.stdout.splitlines())  # no lines run together
    assert "gs://...         --config" not in result.stdout


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(ground, how):
    args = ["--config", "configs/clip_eval.py"] + (["--debug"] if how == "flag" else [])
    result = _run("recap_jax.eval_retrieval", args, {"RECAP_DEBUG": "1"} if how == "env" else None)
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: model.checkpoint / model.hf_dir")

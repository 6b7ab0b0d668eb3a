"""The stages of the miniature paper, each calling the real job and skipping itself once complete.

captioner -> recaption (web + held-out) -> one Recap-CLIP per mixing row -> evaluation. Every job
resumes on its own (Orbax checkpoints, the caption job's finished units); a stage whose outputs
are complete is skipped, so rerunning the command continues where it stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from recap_jax.clip import mini_world as world

EVAL_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "configs", "clip_eval.py")


def _log(message: str) -> None:
    print(f"[reproduce] {message}", flush=True)


def build_base_captioner(config: ml_collections.ConfigDict, folder: str) -> str:
    """The random starting captioner (its tokenizer knows the world's words)."""
    from recap_jax.captioning.tiny_demo import build_tiny_checkpoint

    c = config.captioner
    if not epath.Path(folder).exists():  # written to a temporary folder, then renamed: complete if there
        build_tiny_checkpoint(folder, seed=config.seed, image_size=c.image_size,
                              extra_words=tuple(world.vocabulary()), text_layers=c.text_layers,
                              hidden=c.hidden, heads=c.heads, kv_heads=c.kv_heads,
                              vision_layers=c.vision_layers, vision_hidden=c.vision_hidden)
    return folder


def finetune_captioner(config: ml_collections.ConfigDict, hq_folder: str, workdir: str) -> str:
    """Fine-tunes the whole tiny captioner on the HQ set with `recap_jax.finetune`'s run(config)."""
    from recap_jax.training.defaults import base_config
    from recap_jax.training.trainer import run

    export = epath.Path(workdir, "export")
    if epath.Path(workdir, "summary.json").exists():
        _log(f"captioner: complete at {export}")
        return str(export)
    c = config.captioner
    f = base_config()
    f.workdir = workdir
    f.model.checkpoint = build_base_captioner(config, str(epath.Path(workdir).parent / "base_captioner"))
    f.data.format = "webdataset"
    f.data.path = f"{hq_folder}/*.tar"
    f.data.prompt = c.prompt
    f.data.max_length = c.max_length
    f.data.length_buckets = (c.max_length,)
    f.data.num_workers = 2
    f.data.seed = config.seed
    f.train.trainable = "all"
    f.train.num_steps = c.num_steps
    f.train.global_batch_size = c.batch_size
    f.train.learning_rate = c.learning_rate
    f.train.warmup_ratio = 0.05
    f.train.checkpoint_every = max(c.num_steps // 4, 1)
    f.train.log_every = max(c.num_steps // 10, 1)
    f.export.hf = False
    f.mesh.data, f.mesh.fsdp = -1, 1
    f.distributed.mode = "off"
    _log(f"captioner: fine-tuning {c.num_steps} steps x {c.batch_size} on the HQ set -> {workdir}")
    summary = run(f)
    epath.Path(workdir, "summary.json").write_text(json.dumps(summary, indent=1))
    return summary["export"]


def recaption(config: ml_collections.ConfigDict, checkpoint: str, tars: str, out_dir: str) -> dict[str, Any]:
    """Recaptions webdataset `tars` with the real caption job (recap_jax.captioning.run.run)."""
    from recap_jax.captioning.defaults import base_config
    from recap_jax.captioning.run import run

    if epath.Path(out_dir, "dataset_info.json").exists():
        _log(f"recaption: complete at {out_dir}")
        return {}
    c = base_config()
    c.model.checkpoint = checkpoint
    c.input.format = "webdataset"
    c.input.paths = f"{tars}/*.tar"
    c.input.num_workers = 2
    c.output.dir = out_dir
    c.decode.max_new_tokens = config.captioner.max_new_tokens
    c.decode.batch_size = config.captioner.decode_batch
    c.decode.prefill_batch = min(8, config.captioner.decode_batch)
    c.decode.prompt_buckets = (config.captioner.prompt_bucket,)
    c.prompt = config.captioner.prompt
    c.progress_every_s = 15.0
    c.distributed.mode = "off"
    _log(f"recaption: {tars} -> {out_dir}")
    return run(c)


def read_captions(out_dir: str) -> dict[str, dict[str, str]]:
    """key -> {org_caption, re_caption} of a caption job's output folder."""
    import tensorflow_datasets as tfds

    source = tfds.builder_from_directory(out_dir).as_data_source("train")
    rows = {}
    for i in range(len(source)):
        r = source[i]
        text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
        rows[text(r["key"])] = {"org_caption": text(r["org_caption"]), "re_caption": text(r["re_caption"])}
    return rows


def clip_config(config: ml_collections.ConfigDict, folders: str, tokenizer: str, workdir: str,
                org_caption_prob: float, caption_mix: str = "sample") -> ml_collections.ConfigDict:
    """The Recap-CLIP training config of one row: same seed, model and budget for every p."""
    from recap_jax.clip.defaults import base_config

    k = config.clip
    c = base_config(folders)
    c.workdir = workdir
    c.seed = config.seed
    c.data.tokenizer = tokenizer
    c.data.org_caption_prob = org_caption_prob
    c.data.caption_mix = caption_mix
    c.data.re_caption_max_tokens = k.text_context
    c.data.org_caption_max_tokens = 16
    c.data.num_threads = 2
    c.model.image_size = k.image_size
    c.model.text_context = k.text_context
    c.model.embed_dim = k.embed_dim
    c.train.num_steps = k.num_steps
    c.train.global_batch_size = k.batch_size
    c.train.learning_rate = k.learning_rate
    c.train.warmup_steps = max(k.num_steps // 10, 1)
    c.train.log_every = max(k.num_steps // 5, 1)
    c.train.checkpoint_every = k.num_steps
    c.eval.datasets.heldout.folder = ""
    c.mesh.data = -1
    return c


def train_clip_row(config: ml_collections.ConfigDict, folders: str, tokenizer: str, workdir: str,
                   org_caption_prob: float, caption_mix: str = "sample") -> None:
    from recap_jax.clip.trainer import train

    done = epath.Path(workdir, "done.json")
    if done.exists():
        _log(f"clip: complete at {workdir}")
        return
    row = "concat" if caption_mix == "concat" else f"p = {org_caption_prob}"
    _log(f"clip: {row} ({config.clip.num_steps} steps) -> {workdir}")
    metrics = train(clip_config(config, folders, tokenizer, workdir, org_caption_prob, caption_mix))
    done.write_text(json.dumps(metrics, default=lambda v: np.asarray(v).tolist()))


def _eval_command(workdir: str, folder: str, classes: str, output: str) -> None:
    """One `python -m recap_jax.eval_retrieval` run (its own process: that module owns --config)."""
    flags = {"model.checkpoint": workdir, "batch_size": 50, "output": output,
             "datasets.main.folder": folder, "datasets.main.split": "test",
             "datasets.main.caption_fields": "captions", "zeroshot.folder": classes,
             "zeroshot.templates": "a photo of a {}|a large {}"}
    argv = [sys.executable, "-m", "recap_jax.eval_retrieval", "--config", EVAL_CONFIG]
    subprocess.run(argv + [f"--config.{k}={v}" for k, v in flags.items()], check=True)


def evaluate_clip(workdir: str, paths: dict[str, str]) -> dict[str, Any]:
    """Held-out retrieval (true descriptions, alt-text-style queries) and zero-shot classification
    with the real evaluation command; cached in `workdir/eval.json`."""
    cached = epath.Path(workdir, "eval.json")
    if not cached.exists():
        _log(f"eval: {workdir}")
        true_out, alt_out = f"{cached}.true", f"{cached}.alt"
        _eval_command(workdir, paths["eval_true"], paths["eval_classes"], true_out)
        _eval_command(workdir, paths["eval_alt"], "", alt_out)
        true, alt = (json.loads(epath.Path(p).read_text()) for p in (true_out, alt_out))
        cached.write_text(json.dumps({"true": true["main"], "alt": alt["main"], "zeroshot": true["zeroshot"]}))
    return json.loads(cached.read_text())


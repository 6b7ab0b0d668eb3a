"""The stages of the miniature paper, each calling the real job and skipping itself once complete.

captioner -> recaption (web + held-out) -> one Recap-CLIP per mixing row -> evaluation. Every job
resumes on its own (Orbax checkpoints, the caption job's finished units); a stage whose outputs
are complete is skipped, so rerunning the command continues where it stopped.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from recap_jax.clip import mini_world as world
from recap_jax.errors import ConfigError

EVAL_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "configs", "clip_eval.py")


def _log(message: str) -> None:
    print(f"[reproduce] {message}", flush=True)


def check_captioner_init(config: ml_collections.ConfigDict) -> None:
    init = config.captioner.init
    if init and not epath.Path(init, "params").exists():
        raise ConfigError(f"captioner.init={init}: not a converted captioner folder (no params/)")


def build_base_captioner(config: ml_collections.ConfigDict, folder: str) -> str:
    """The starting captioner: `captioner.init` if set (a converted captioner), else a random one
    whose tokenizer knows the world's words."""
    from recap_jax.captioning.tiny_demo import build_tiny_checkpoint

    c = config.captioner
    check_captioner_init(config)
    if c.init:
        return c.init
    if not epath.Path(folder).exists():  # written to a temporary folder, then renamed: complete if there
        build_tiny_checkpoint(folder, seed=config.seed, image_size=c.image_size,
                              extra_words=tuple(world.vocabulary()), text_layers=c.text_layers,
                              hidden=c.hidden, heads=c.heads, kv_heads=c.kv_heads,
                              vision_layers=c.vision_layers, vision_hidden=c.vision_hidden,
                              patch_size=c.patch_size, feature_layer=c.feature_layer)
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
    c.train.checkpoint_every = max(k.num_steps // 4, 1)  # an interrupted row resumes
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


def _eval_config(workdir: str, paths: dict[str, str]) -> ml_collections.ConfigDict:
    """configs/clip_eval.py with the held-out sets: `main` (true descriptions), `alt` (alt-text-style
    queries) and zero-shot classes, so one model load serves all three."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("clip_eval_config", EVAL_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.model.checkpoint = workdir
    c.batch_size = 50
    c.datasets.main.update(folder=paths["eval_true"], split="test", caption_fields="captions")
    c.datasets.alt = ml_collections.ConfigDict(c.datasets.main.to_dict())
    c.datasets.alt.folder = paths["eval_alt"]
    c.zeroshot.folder = paths["eval_classes"]
    c.zeroshot.templates = "a photo of a {}|a large {}"
    c.distributed.mode = "off"
    return c


def evaluate_clip(workdir: str, paths: dict[str, str]) -> dict[str, Any]:
    """Held-out retrieval (true descriptions, alt-text-style queries) and zero-shot classification
    with the evaluation command's library call (`recap_jax.clip.retrieval_job.evaluate_config`, in this
    process: no extra start-up and compile per row); cached in `workdir/eval.json`."""
    from recap_jax.clip.retrieval_job import evaluate_config

    cached = epath.Path(workdir, "eval.json")
    if not cached.exists():
        _log(f"eval: {workdir}")
        out = evaluate_config(_eval_config(workdir, paths))
        cached.write_text(json.dumps({"true": out["main"], "alt": out["alt"], "zeroshot": out["zeroshot"]},
                                     default=lambda v: np.asarray(v).tolist()))
    return json.loads(cached.read_text())


def clip_score_win_rate(clip_workdir: str, tars: str, captions: dict[str, dict[str, str]],
                        cached: str) -> dict[str, Any]:
    """Section 4's caption-image score comparison on the web set: each image's CLIP score (cosine)
    of its recaption vs its alt-text, with `recap_jax.analysis`'s scorer and counting (ties half);
    cached in `cached`."""
    from recap_jax.analysis.clip_scores import ClipScorer
    from recap_jax.analysis.stats import Accumulator
    from recap_jax.mini_paper.world_files import read_images
    from recap_jax.release.rows import Row

    if epath.Path(cached).exists():
        return json.loads(epath.Path(cached).read_text())
    _log(f"clip scores: recaption vs alt-text with {clip_workdir}")
    images = read_images(tars)
    rows = [Row(key=k, url="", org_caption=v["org_caption"], re_caption=v["re_caption"], image=images[k])
            for k, v in sorted(captions.items())]
    scorer, acc = ClipScorer(clip_workdir, batch_size=50), Accumulator()
    for start in range(0, len(rows), 500):
        chunk = rows[start:start + 500]
        for row, scores in zip(chunk, scorer.score(chunk)):
            if scores is not None:
                acc.add_scores(row.key, *scores)
    c = acc.clip
    scored = max(c["scored"], 1)
    out = {"clip_row": os.path.basename(clip_workdir).removeprefix("p"), "scored": c["scored"],
           "re_win_rate": c["re_wins"] / scored, "org_win_rate": c["org_wins"] / scored,
           "re_mean_score": c["re_sum"] / scored, "org_mean_score": c["org_sum"] / scored}
    epath.Path(cached).write_text(json.dumps(out))
    return out

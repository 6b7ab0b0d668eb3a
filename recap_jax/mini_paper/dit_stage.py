"""The miniature paper's Recap-DiT half (Table 7): the real jobs at each p, judged by GenEval-mini.

recaptioned web set -> `encode_latents` (pixel mode, the DiT's image size) -> one `train_dit` per
p (same seed, model, steps and data order; the text through the frozen text tower of the CLIP row
`dit.text_row`) -> `generate` from the held-out scenes' true descriptions ("Recap" prompts) and
their web alt-text ("Raw" prompts) -> GenEval-mini, FID-analogue and CLIP score (`geneval.py`).
Every step is skipped when complete (each job resumes on its own), like the other stages.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections
import numpy as np
from etils import epath

from recap_jax.clip import mini_world as world
from recap_jax.dit.defaults import latents_config
from recap_jax.mini_paper import geneval
from recap_jax.mini_paper import judge as judge_lib

PROMPT_SETS = ("raw", "recap")


def _log(message: str) -> None:
    print(f"[reproduce] {message}", flush=True)


def held_out_prompts(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The held-out scenes (as `world_files` wrote them), their descriptions and fresh web alt-text
    (the Raw prompts: the same noise rates as the web set, drawn for these scenes)."""
    w = config.world
    scenes = world.make_scenes(w.num_eval, config.seed, "eval")
    rates = world.AltTextRates(unrelated=w.unrelated, wrong_colour=w.wrong_colour, no_colour=w.no_colour,
                               other_object=w.other_object)
    rng = np.random.default_rng([config.seed, 2])
    alt = [world.alt_text(s, rng, rates)[0] for s in scenes]
    return {"scenes": scenes, "keys": [f"eval{i:07d}" for i in range(len(scenes))],
            "recap": [s.description() for s in scenes], "raw": alt,
            "clauses": {"recap": [geneval.description_clauses(s) for s in scenes],
                        "raw": [geneval.alt_text_clauses(t) for t in alt]}}


def train_judge(config: ml_collections.ConfigDict, folder: str, scenes: list[world.Scene],
                real: np.ndarray) -> tuple[judge_lib.Judge, dict[str, float]]:
    """The judge (trained once per settings, kept in `folder`) and its accuracy on the real held-out scenes."""
    j = config.judge
    settings = judge_lib.JudgeSettings(image_size=config.dit.image_size, render_size=config.world.image_size,
                                       num_scenes=j.num_scenes, num_steps=j.num_steps,
                                       batch_size=j.batch_size, learning_rate=j.learning_rate)
    saved = epath.Path(folder, "judge.json")
    if not saved.exists() or json.loads(saved.read_text()) != dataclasses.asdict(settings):
        _log(f"judge: {j.num_steps} steps on {j.num_scenes} true scenes -> {folder}")
        judge_lib.train_judge(settings, config.seed, log=print).save(folder)
    judge = judge_lib.Judge.load(folder)
    return judge, judge_lib.accuracy(judge, real, scenes)


def encode_latents(config: ml_collections.ConfigDict, captions_dir: str, out_dir: str) -> str:
    """`encode_latents` in pixel mode over the recaptioned web set (skipped when complete)."""
    from recap_jax.dit import latents

    if epath.Path(out_dir, "dataset_info.json").exists():
        _log(f"latents: complete at {out_dir}")
        return out_dir
    c = latents_config()
    c.input.format, c.input.dir, c.input.records_per_unit = "caption_output", captions_dir, config.world.per_shard
    c.autoencoder.kind, c.autoencoder.posterior = "pixels", "mean"
    c.image_size, c.batch_size, c.seed = config.dit.image_size, 64, config.seed
    c.output.dir = out_dir
    c.distributed.mode = "off"
    _log(f"latents: {captions_dir} -> {out_dir} (pixels, {config.dit.image_size} px)")
    latents.run(c)
    return out_dir


def dit_config(config: ml_collections.ConfigDict, latents_dir: str, text_encoder: str, workdir: str,
               org_caption_prob: float) -> ml_collections.ConfigDict:
    """The train_dit / sample config of one row: only `data.org_caption_prob` differs between rows."""
    from recap_jax.dit.defaults import base_config

    d = config.dit
    c = base_config()
    c.workdir, c.seed = workdir, config.seed
    c.mesh.data, c.mesh.fsdp = -1, 1
    c.distributed.mode = "off"
    c.data.dir, c.data.org_caption_prob, c.data.num_threads = latents_dir, org_caption_prob, 2
    c.text.encoder, c.text.max_tokens = text_encoder, d.text_max_tokens
    c.model.size, c.model.patch_size, c.model.learn_sigma = d.model_size, d.patch_size, d.learn_sigma
    t = c.train
    t.num_steps, t.global_batch_size, t.learning_rate = d.num_steps, d.batch_size, d.learning_rate
    t.ema_decay, t.cond_drop_prob = d.ema_decay, d.cond_drop_prob
    t.log_every, t.checkpoint_every = max(d.num_steps // 10, 1), max(d.num_steps // 4, 1)
    s = c.sample
    s.steps, s.sampler, s.guidance_scale, s.batch_size = d.sample_steps, d.sampler, d.guidance_scale, 50
    s.seed = config.seed
    return c


def train_row(c: ml_collections.ConfigDict) -> None:
    from recap_jax.dit.trainer import train

    done = epath.Path(c.workdir, "done.json")
    if done.exists():
        _log(f"dit: complete at {c.workdir}")
        return
    _log(f"dit: p = {c.data.org_caption_prob} ({c.train.num_steps} steps x {c.train.global_batch_size}) -> {c.workdir}")
    summary = train(c)
    summary.pop("state", None)
    done.write_text(json.dumps(summary, default=lambda v: np.asarray(v).tolist()))


def sample_row(c: ml_collections.ConfigDict, prompts: dict[str, Any]) -> dict[str, np.ndarray]:
    """Prompt set -> uint8 images [n, s, s, 3], every image seeded by its scene's key (the same seeds
    in every row); cached in WORKDIR/samples_SET_SAMPLER-STEPS-gSCALE.npy."""
    from recap_jax.dit.sample import Generator

    out, generator = {}, None
    for name in PROMPT_SETS:
        s = c.sample
        path = epath.Path(c.workdir, f"samples_{name}_{s.sampler}{s.steps}-g{s.guidance_scale:g}.npy")
        if not path.exists():
            generator = generator or Generator(c)
            _log(f"dit: sampling {len(prompts[name])} {name} prompts with {c.workdir}")
            images = generator(list(prompts[name]), list(prompts["keys"]))
            with open(str(path) + ".tmp", "wb") as f:
                np.save(f, images)
            os.replace(str(path) + ".tmp", path)
        out[name] = np.load(path, allow_pickle=False)
    return out


def score(images: dict[str, np.ndarray], prompts: dict[str, Any], judge: judge_lib.Judge,
          reference: np.ndarray, encoders: Any, distance) -> dict[str, Any]:
    """GenEval-mini, FID-analogue and CLIP score per prompt set."""
    from recap_jax.metrics.clip_score import clip_scores

    out = {}
    for name in PROMPT_SETS:
        result = geneval.evaluate_images(images[name], prompts["clauses"][name], judge, reference, distance)
        result["clip_score"] = float(np.mean(clip_scores(encoders, images[name], prompts[name])))
        out[name] = result
    return out


def run_dit(config: ml_collections.ConfigDict, root: str, captions_dir: str) -> dict[str, Any]:
    """Every DiT row, scored; returns the numbers `dit_report` tabulates (and the images for the grid)."""
    from recap_jax.metrics.clip_score import clip_scores, load_clip_encoders
    from recap_jax.metrics.frechet import frechet_distance_of_features

    d = config.dit
    prompts = held_out_prompts(config)
    real = judge_lib.render_scenes(prompts["scenes"], config.world.image_size, d.image_size)
    judge, accuracy = train_judge(config, os.path.join(root, "judge"), prompts["scenes"], real)
    _log("judge accuracy on real held-out scenes: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in accuracy.items()))
    latents = encode_latents(config, captions_dir, os.path.join(root, "latents"))
    text_row = os.path.join(root, "clip", f"p{d.text_row}")
    encoders = load_clip_encoders(text_row, field="dit.text_row", batch_size=50)
    reference = judge.features(real)
    # The real held-out images scored against their own prompts: the ceiling a perfect generator meets.
    real_scores = {name: {**geneval.prompt_following(judge.predict(real), prompts["clauses"][name]),
                          "clip_score": float(np.mean(clip_scores(encoders, real, prompts[name])))}
                   for name in PROMPT_SETS}
    rows, grids = {}, {}
    for p in d.ps:
        name = f"{p:.1f}"
        c = dit_config(config, latents, text_row, os.path.join(root, "dit", f"p{name}"), p)
        train_row(c)
        images = sample_row(c, prompts)
        rows[name] = score(images, prompts, judge, reference, encoders, frechet_distance_of_features)
        grids[name] = images["recap"][:d.grid_images]
    return {"rows": rows, "real": real_scores, "judge_accuracy": accuracy, "text_row": d.text_row,
            "num_prompts": len(prompts["keys"]), "grid_prompts": prompts["recap"][:d.grid_images],
            "grids": grids | {"real": real[:d.grid_images]}}

"""Peak host memory of loading a converted bf16 captioner, then of its first compile and caption.

    .venv/bin/python benchmarks/load_memory.py [--layers 8] [--workdir /tmp/load_memory]

Writes a random converted checkpoint (`recap_jax.convert`'s format, bf16) shaped like a small
LLaVA-LLaMA-3 (hidden 2048, GQA 32/8, LLaMA-3's 128,256-token vocabulary, a 4-layer CLIP-L-wide
tower at 336 px), then in a fresh process (1) `load_captioner` with bf16 on a 1-device mesh, as
the caption job does, recording peak RSS against the params' bytes; (2) the sampler's first
compile and one caption. On CPU the "device" is host memory, so a load that peaks near 1x the
params' bytes (plus the interpreter) holds one copy. Prints, per loader, the load peak, the RSS
after loading and the first caption's peak (compile included) as multiples of the params' bytes,
each from the RSS before loading. Writes benchmarks/results/load_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "load_memory.json"
sys.path.insert(0, str(REPO))

HF_CONFIG = {
    "text_config": {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 7168,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0,
                    "rms_norm_eps": 1e-5, "max_position_embeddings": 8192},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 4,
                      "num_attention_heads": 16, "image_size": 336, "patch_size": 14},
    "image_token_index": 7, "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
}


def write_checkpoint(out: pathlib.Path, layers: int) -> int:
    """A random bf16 converted checkpoint, written one leaf at a time; returns the params' bytes."""
    import jax
    import ml_dtypes
    import numpy as np
    from flax import linen as nn
    from flax import traverse_util

    from recap_jax.conversion import bundle
    from recap_jax.conversion.llava import abstract_params
    from recap_jax.models.config import llava_config_from_hf
    from recap_jax.preprocess.image import ImageSettings
    from recap_jax.preprocess.text import stop_token_ids
    from recap_jax.captioning.tiny_demo import tiny_tokenizer

    hf = json.loads(json.dumps(HF_CONFIG))
    hf["text_config"]["num_hidden_layers"] = layers
    config = llava_config_from_hf(hf)
    shapes = traverse_util.flatten_dict(nn.unbox(abstract_params(config, jax.numpy.bfloat16)))
    rng = np.random.default_rng(0)

    def leaves():
        # Random bf16 bit patterns with exponents of 2^-15..2^-8 and random signs (fast to draw).
        for path, s in shapes.items():
            bits = rng.integers(0x3800, 0x3B80, s.shape, dtype=np.uint16)
            bits |= rng.integers(0, 2, s.shape, dtype=np.uint16) << 15
            yield path, bits.view(ml_dtypes.bfloat16)

    tokenizer = tiny_tokenizer()
    spec = bundle.CaptionerSpec(config, ImageSettings(size=336, mode="pad"), tokenizer, None,
                                tokenizer.chat_template, stop_token_ids(tokenizer))
    bundle.save_converted(out, spec, leaves(), "bfloat16", {"layout": "random-benchmark"})
    return sum(int(np.prod(s.shape)) * 2 for s in shapes.values())


class PeakRss:
    """This process's peak RSS over a phase, sampled every 5 ms by a thread (ru_maxrss cannot be
    reset, and after fork + exec it starts at the parent's size)."""

    def __init__(self):
        import psutil
        self._process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.start = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.005)

    def stop(self) -> tuple[float, float]:
        """(RSS at the start, peak RSS) in MiB."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        return self.start / 2**20, self.peak / 2**20


def checkpoint_bytes(checkpoint: pathlib.Path) -> int:
    """The params' bytes of an existing converted checkpoint (from its config, no weights read)."""
    import jax
    import numpy as np
    from flax import linen as nn

    from recap_jax.conversion.llava import abstract_params
    from recap_jax.models.config import LlavaConfig
    config = LlavaConfig.from_json_dict(json.loads((checkpoint / "recap_config.json").read_text())["llava"])
    shapes = jax.tree.leaves(nn.unbox(abstract_params(config, jax.numpy.bfloat16)))
    return sum(int(np.prod(s.shape)) * 2 for s in shapes)


def orbax_grouped_load(checkpoint: str, shardings_fn):
    """The previous way, for comparison: `ocp.load` of ~256 MiB groups of params, each group read
    whole into host buffers, then placed."""
    import jax
    import orbax.checkpoint.experimental.v1 as ocp
    from etils import epath
    from flax import linen as nn
    from flax import traverse_util

    from recap_jax.conversion.bundle import read_converted_spec
    from recap_jax.conversion.bundle import SAVE_GROUP_BYTES
    from recap_jax.conversion.llava import abstract_params

    spec, _ = read_converted_spec(checkpoint)
    boxed = abstract_params(spec.config, jax.numpy.bfloat16)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          nn.unbox(boxed), nn.unbox(shardings_fn(boxed)))
    context = ocp.Context()
    context.pytree.loading.partial_load = True
    restored, group, size = {}, {}, 0
    with context:
        for path, leaf in list(traverse_util.flatten_dict(target).items()) + [(None, None)]:
            if path is not None:
                group[path] = leaf
                size += leaf.size * leaf.dtype.itemsize
            if group and (path is None or size >= SAVE_GROUP_BYTES):
                part = ocp.load(epath.Path(checkpoint) / "params", traverse_util.unflatten_dict(group))
                restored.update(traverse_util.flatten_dict(part))
                group, size = {}, 0
    return spec, traverse_util.unflatten_dict(restored)


def measure(checkpoint: str, way: str) -> dict:
    """Runs in a fresh process: load, then first compile + one caption; peak RSS of each, from a
    baseline taken after every library the load imports (transformers, orbax) is imported."""
    import jax
    import numpy as np
    import orbax.checkpoint.experimental.v1  # noqa: F401
    import transformers  # noqa: F401

    from recap_jax.captioning.model_loading import load_captioner
    from recap_jax.decoding.sampler import Request, Sampler
    from recap_jax.decoding.settings import DecodeSettings
    from recap_jax.models.llava import LlavaModel
    from recap_jax.parallel import mesh as mesh_lib

    jax.numpy.zeros(1).block_until_ready()
    mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
    rss = PeakRss()
    start = time.perf_counter()
    shardings_fn = lambda boxed: mesh_lib.params_shardings(mesh, boxed)  # noqa: E731
    if way == "chunks":
        spec, params = load_captioner(checkpoint=checkpoint, dtype="bfloat16", shardings_fn=shardings_fn)
    else:
        spec, params = orbax_grouped_load(checkpoint, shardings_fn)
    jax.block_until_ready(params)
    load_s = time.perf_counter() - start
    before_load, load_peak = rss.stop()
    params_mib = sum(x.nbytes for x in jax.tree.leaves(params)) / 2**20
    dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(params)})
    model = LlavaModel(spec.config, dtype=jax.numpy.bfloat16, param_dtype=jax.numpy.bfloat16)
    prompt = spec.prompt_encoder().encode("describe this image")
    settings = DecodeSettings(max_new_tokens=4, batch_size=1, prefill_batch=1,
                              prompt_buckets=(int(len(prompt) + 63) // 64 * 64,))
    sampler = Sampler(model, params, settings, cache_dtype=jax.numpy.bfloat16)
    pixels = np.zeros((336, 336, 3), np.float32)
    rss = PeakRss()
    start = time.perf_counter()
    results = list(sampler.generate([Request(prompt, pixels)]))
    caption_s = time.perf_counter() - start
    before_caption, caption_peak = rss.stop()
    return {"load": way, "params_mib": round(params_mib, 1), "param_dtypes": dtypes,
            "rss_before_load_mib": round(before_load, 1), "load_peak_rss_mib": round(load_peak, 1),
            "load_s": round(load_s, 2), "load_peak_over_params": round((load_peak - before_load) / params_mib, 3),
            "after_load_over_params": round((before_caption - before_load) / params_mib, 3),
            "rss_before_caption_mib": round(before_caption, 1), "caption_peak_rss_mib": round(caption_peak, 1),
            "first_caption_s": round(caption_s, 2),
            "caption_peak_over_params": round((caption_peak - before_load) / params_mib, 3),
            "captions": len(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint in --workdir (reused if there)")
    parser.add_argument("--ways", default="chunks,orbax_groups",
                        help="loaders to measure, each in a fresh process: chunks (load_captioner), "
                             "orbax_groups (the previous way: ocp.load of ~256 MiB groups)")
    parser.add_argument("--results", default=str(RESULTS), help="where the JSON goes")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--way", default="chunks", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.way)))
        return
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="load_memory_"))
    try:
        start = time.perf_counter()
        params_bytes = checkpoint_bytes(work / "ckpt") if (work / "ckpt").exists() else \
            write_checkpoint(work / "ckpt", args.layers)
        print(f"wrote {params_bytes / 2**30:.2f} GiB of bf16 params in {time.perf_counter() - start:.0f} s",
              flush=True)
        runs = []
        for way in args.ways.split(","):
            done = subprocess.run([sys.executable, __file__, "--measure", str(work / "ckpt"), "--way", way],
                                  capture_output=True, text=True, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
            if done.returncode:
                raise SystemExit(f"load ({way}) failed (exit {done.returncode}): {done.stderr[-2000:]}")
            runs.append(json.loads(done.stdout.splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
            r = runs[-1]
            print(f"{way}: load peak {r['load_peak_over_params']:.2f}x the params' bytes, after load "
                  f"{r['after_load_over_params']:.2f}x, first caption peak {r['caption_peak_over_params']:.2f}x "
                  f"(from the RSS before loading; load {r['load_s']:.0f} s, first caption {r['first_caption_s']:.0f} s)",
                  flush=True)
        result = {"layers": args.layers, "params_bytes": params_bytes, "runs": runs}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    results = pathlib.Path(args.results)
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

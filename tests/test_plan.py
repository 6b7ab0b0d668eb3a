"""The pod plan: a tiny captioner compiled for TPU v4 devices (libtpu's topology, no TPU here)."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import pytest

from configs_loader import load
from recap_jax.errors import ConfigError
from recap_jax.models.config import llava_config_from_hf
from recap_jax.parallel.mesh import make_mesh
from recap_jax.planning import caption_plan, chips, hlo, startup
from recap_jax.planning.model_spec import PlannedModel
from recap_jax.decoding.lowering import lower_caption_programs
from recap_jax.captioning.tiny_demo import tiny_llava_hf_config

REPO = pathlib.Path(__file__).resolve().parent.parent


def tiny_job():
    c = load("demo.py")
    c.model.dtype = "bfloat16"
    c.mesh.data = 4  # one v4 host: 4 chips, one replica each
    c.decode.batch_size, c.decode.prefill_batch, c.decode.prompt_buckets = 16, 4, (64,)
    c.decode.max_new_tokens, c.decode.steps_per_sync = 24, 4
    config = llava_config_from_hf(tiny_llava_hf_config(image_size=56, patch_size=14))
    return c, PlannedModel(config, config.num_image_tokens + 20, "tiny")


@pytest.fixture(scope="module")
def v4_host():
    pod = chips.compile_slice("v4-8")
    assert pod.num_chips == 4 and pod.num_hosts == 1 and pod.chip.name == "v4"
    return pod.host_devices(0)


@pytest.fixture(scope="module")
def tiny_plan(v4_host):
    config, model = tiny_job()
    return caption_plan.compile_caption(config, model, v4_host)


def test_tiny_captioner_fits_a_v4_chip_and_decode_moves_no_cache(tiny_plan):
    config, model = tiny_job()
    t = model.config.text
    assert caption_plan.fits(tiny_plan, chips.CHIPS["v4"], reserve_bytes=chips.GIB)
    assert set(tiny_plan.functions) == {"prefill_64", "decode"} and tiny_plan.bucket == 64
    # Per chip: a quarter of the slots, the cache length (64 + 24 rounded up to a 128 tile), bf16 K and V.
    assert tiny_plan.cache_bytes == 2 * t.num_layers * 4 * 128 * t.num_kv_heads * t.head_dim * 2
    assert tiny_plan.total_bytes >= tiny_plan.params_bytes + tiny_plan.cache_bytes
    decode = tiny_plan.functions["decode"]
    assert decode.flops > 0 and decode.bytes_accessed > 0
    kinds = {c.kind for c in decode.collectives}
    assert not kinds & {"all-gather", "all-to-all"}, decode.collectives
    assert all(c.bytes <= 8 for c in decode.collectives), decode.collectives  # loop-condition flags only


def test_insert_moves_no_cache_across_chips(tiny_plan):
    """A prefilled row goes into a slot of its own chip: no all-gather/all-to-all in prefill + insert
    (the weights are replicated per replica, the activations split over the chips)."""
    prefill = tiny_plan.functions["prefill_64"]
    kinds = {c.kind for c in prefill.collectives}
    assert not kinds & {"all-gather", "all-to-all"}, prefill.collectives


def test_decode_loop_cost_is_one_step(v4_host, tiny_plan):
    """XLA's cost analysis counts a while body once: the loop's cost does not grow with its trip count."""
    config, model = tiny_job()
    config.decode.steps_per_sync = 1
    from recap_jax.models.llava import LlavaModel
    import jax.numpy as jnp
    llava = LlavaModel(model.config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    lowered = lower_caption_programs(llava, caption_plan.settings_of(config, model.prompt_length), make_mesh({"data": 4}, v4_host),
                                     jnp.bfloat16, buckets=[])
    one_step = hlo.compiled_stats(lowered.decode.compile())
    assert one_step.flops == tiny_plan.functions["decode"].flops


def test_too_many_slots_do_not_fit_and_the_largest_that_fits_is_compiled(v4_host, tiny_plan):
    config, model = tiny_job()
    small_chip = dataclasses.replace(chips.CHIPS["v4"], hbm_bytes=tiny_plan.total_bytes - 1)
    assert not caption_plan.fits(tiny_plan, small_chip, reserve_bytes=0)
    largest, plan = caption_plan.largest_fitting_batch(config, model, v4_host, tiny_plan, small_chip, 0)
    assert 0 < largest < 16 and largest % 4 == 0
    assert plan.batch_size == largest and caption_plan.fits(plan, small_chip, reserve_bytes=0)


def test_throughput_bound_counts_every_scanned_layer(tiny_plan):
    config, model = tiny_job()
    rate = caption_plan.throughput(tiny_plan, model, config, chips.CHIPS["v4"], 4, new_tokens=24)
    pre, dec = tiny_plan.functions["prefill_64"], tiny_plan.functions["decode"]
    # The compiled scans count one layer; the plan adds the other (layers - 1) from each layer alone.
    assert tiny_plan.prefill_cost.flops > pre.flops and tiny_plan.decode_step_cost.flops > dec.flops
    assert rate.prefill_flops == pytest.approx(tiny_plan.prefill_cost.flops)  # 4 prompts over 4 chips
    # 4 slots/chip; the decode kernel's cache reads, which XLA does not count, added per step.
    kernel_reads = caption_plan.kernel_cache_reads(tiny_plan, 24)
    assert tiny_plan.attention_block and kernel_reads > 0
    assert rate.decode_bytes == pytest.approx((tiny_plan.decode_step_cost.bytes_accessed + kernel_reads) * 24 / 4)
    # What the model needs (matmuls only, causal prompt) is a lower bound of what the program does.
    assert model.config.text.num_layers == 2
    assert rate.model_flops < rate.prefill_flops + rate.decode_flops
    assert rate.images_per_s_per_chip > 0 and rate.days(128) > rate.days(256)
    # MFU: the model's FLOPs at peak over the time per image; the bound's FLOPs exceed the model's.
    assert 0 < rate.mfu() < 1 and rate.mfu(0.5) == pytest.approx(rate.mfu() / 2)
    assert rate.days(128) * rate.mfu() == pytest.approx(1.3e9 * rate.physical_s / 128 / 86400)


def test_fit_check_is_a_no_op_off_tpu(monkeypatch):
    config, _ = tiny_job()
    config.decode.batch_size = 10**9  # would not fit any chip; on CPU nothing is checked
    compiled = []
    monkeypatch.setattr(startup, "fit_error", lambda *a, **k: compiled.append(a) or "does not fit")
    assert startup.check_fits_on_tpu(config, make_mesh({"data": 1}, jax.devices()[:1])) is None
    assert compiled == []  # nothing compiled, nothing read


def test_fit_check_on_tpu_devices_names_the_batch_that_fits(v4_host, tiny_plan, monkeypatch):
    # The caption job's start-up branch on TPU, on libtpu's compile-only v4 devices; a chip with
    # room for about 10 of the tiny job's slots per chip keeps the search for the largest batch short.
    config, model = tiny_job()
    monkeypatch.setattr(startup, "planned_model", lambda c: model)
    per_slot = (tiny_plan.cache_bytes + tiny_plan.state_bytes + tiny_plan.functions["decode"].temp_bytes) / 4
    room = tiny_plan.total_bytes - 4 * per_slot + 10 * per_slot  # 16 slots on 4 chips: 4 per chip
    small = dataclasses.replace(chips.chip_of(v4_host[0]), hbm_bytes=int(startup.RESERVE_BYTES + room))
    monkeypatch.setattr(startup, "chip_of", lambda device: small)
    mesh = make_mesh({"data": 4}, v4_host)
    assert startup.check_fits_on_tpu(config, mesh) is None  # the 16 slots fit
    config.decode.batch_size = 1024
    with pytest.raises(ConfigError) as e:
        startup.check_fits_on_tpu(config, mesh)
    message = str(e.value)
    assert message.startswith("decode.batch_size=1024 does not fit a TPU v4 chip"), message
    largest = int(message.rsplit("=", 1)[1])
    assert 16 <= largest < 1024 and largest % 4 == 0


def test_collectives_are_read_from_hlo_text():
    text = "\n".join([
        '  %all-gather-start = (bf16[2,8]{1,0}, bf16[8,8]{1,0:T(8,128)(2,1)}) all-gather-start(%p), '
        'metadata={op_name="jit(f)/scatter"}',
        "  %all-gather-done = bf16[8,8]{1,0} all-gather-done(%all-gather-start)",
        "  ROOT %all-reduce.1 = f32[] all-reduce(%x), to_apply=%add",
        "  %fusion = bf16[4,4]{1,0} fusion(%a), kind=kLoop",
        "  %cp = s32[3]{0} collective-permute(%y), source_target_pairs={{0,1}}"])
    found = hlo.collectives(text)
    assert [(c.kind, c.bytes) for c in found] == [("all-gather", 2 * 16 + 2 * 64), ("all-reduce", 4),
                                                  ("collective-permute", 12)]
    assert found[0].source == "jit(f)/scatter" and found[0].shape == "(bf16[2,8], bf16[8,8])"
    assert hlo.summarize_collectives(found)["all-gather"] == {"count": 1, "bytes": 160}


@pytest.mark.slow  # a subprocess: imports, 2 programs and 3 layer compiles (the functions above test each part)
def test_plan_command_on_a_tiny_checkpoint(tmp_path):
    from recap_jax.captioning.tiny_demo import build_tiny_checkpoint
    build_tiny_checkpoint(str(tmp_path / "tiny"))
    cmd = [sys.executable, "-m", "recap_jax.plan", f"--config={REPO / 'configs' / 'demo.py'}",
           f"--config.model.checkpoint={tmp_path / 'tiny'}", "--config.model.dtype=bfloat16",
           "--config.mesh.data=4", "--config.decode.batch_size=8", "--config.decode.prefill_batch=4",
           "--topology=v4-8", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(done.stdout)
    assert plan["fits"] and plan["topology"] == "v4:2x2x1" and plan["chips"] == 4
    assert plan["model"].startswith("model.checkpoint=") and plan["bucket"] == 64
    assert set(plan["functions"]) == {"prefill_64", "decode"}
    assert "all-gather" not in plan["functions"]["decode"]["collectives"]
    assert plan["images_per_s_per_chip"] > 0 and plan["total_bytes"] < plan["hbm_bytes"]


def test_a_program_the_tpu_compiler_refuses_is_reported_as_not_fitting():
    class Refused:
        def compile(self):
            raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required "
                               "(45.43G) exceeds available HBM (30.75G).")

    with pytest.raises(caption_plan.CompilerOutOfMemory, match="45.43G"):
        caption_plan.compile_stats(Refused())


def test_uint8_pixels_cost_the_prefill_no_more_than_float32(v4_host, tiny_plan):
    """The prefill normalises uint8 pixels on the TPU without a gather (preprocess/image.py): its
    compiled bytes stay those of the float32-pixel prefill (a gather counted 17x at the 8B's size)."""
    config, model = tiny_job()
    import jax.numpy as jnp
    from recap_jax.models.llava import LlavaModel
    llava = LlavaModel(model.config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    lowered = lower_caption_programs(llava, caption_plan.settings_of(config, model.prompt_length),
                                     make_mesh({"data": 4}, v4_host), jnp.bfloat16, buckets=[64],
                                     pixels_dtype=jnp.float32)
    floats = hlo.compiled_stats(lowered.prefill[64].compile())
    assert tiny_plan.functions["prefill_64"].bytes_accessed <= 1.05 * floats.bytes_accessed

"""Stage 1 from separate parts: a HF CLIP vision folder + a HF LLaMA folder + a fresh projector."""

import json
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from caption_helpers import REPO, read_output, run_caption, text
from finetune_helpers import CAPTIONS, PROMPT, write_images, write_llava_json
from recap_jax.captioning import model_loading
from recap_jax.captioning.tiny_demo import tiny_llava_hf_config
from recap_jax.conversion import parts
from recap_jax.errors import ConfigError
from recap_jax.finetuning.defaults import base_config
from recap_jax.finetuning.trainer import run
from test_convert_original import llama3_tokenizer


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    hf = tiny_llava_hf_config()
    torch.manual_seed(3)
    vision_cfg = {k: v for k, v in hf["vision_config"].items() if k != "model_type"}
    vision = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**vision_cfg)).eval()
    llm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **{k: v for k, v in hf["text_config"].items() if k != "model_type"})).eval()
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: make them tell
        for model in (vision, llm):
            for name, p in model.named_parameters():
                if "norm" in name or name.endswith(".bias"):
                    p.add_(torch.randn_like(p) * 0.1)
    vision.save_pretrained(root / "clip")
    llm.save_pretrained(root / "llama")
    llama3_tokenizer(root / "llama")
    names = write_images(root / "images")
    data = write_llava_json(root / "data.json", names, CAPTIONS)
    return root, vision, llm, data


def _config(root, data, workdir):
    c = base_config()
    c.model.vision_dir, c.model.llm_dir, c.workdir = str(root / "clip"), str(root / "llama"), str(workdir)
    c.data.path, c.data.image_folder = str(data), str(root / "images")
    c.data.max_length, c.data.length_buckets, c.data.num_workers = 64, (48,), 2
    c.mesh.fsdp, c.distributed.mode = 1, "off"
    c.train.update(trainable="projector", num_steps=3, global_batch_size=4, learning_rate=1e-2, log_every=1)
    return c


def test_stage1_from_parts_trains_the_projector_and_exports_a_captioner(sources, tmp_path):
    root, vision, llm, data = sources
    summary = run(_config(root, data, tmp_path / "work"))
    assert summary["steps"] == 3 and np.isfinite(summary["loss"])
    spec, params = model_loading.load_captioner(checkpoint=summary["export"])
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(params)).items()}

    # Vision and LLM params are the source folders' weights, bit for bit.
    spec_src, tensors = parts.read_parts(root / "clip", root / "llama")
    source = traverse_util.flatten_dict(jax.device_get(
        parts.convert_params(spec_src.config, tensors, np.float32, fresh=(parts.PROJECTOR,))))
    assert {k for k in flat if k[0] != parts.PROJECTOR} == set(source)
    for k, v in source.items():
        np.testing.assert_array_equal(flat[k], np.asarray(v), err_msg=str(k))
    np.testing.assert_array_equal(flat[("language_model", "embed_tokens", "embedding")],
                                  llm.model.embed_tokens.weight.detach().numpy())
    np.testing.assert_array_equal(  # torch OIHW -> HWIO
        flat[("vision_tower", "patch_embedding", "kernel")],
        vision.get_input_embeddings().weight.detach().numpy().transpose(2, 3, 1, 0))

    # The projector: LLaVA's init (nn.Linear default), then trained.
    fresh = traverse_util.flatten_dict(parts.fresh_projector(spec_src, seed=0))
    for k, init in fresh.items():
        fan_in = 32 if k[0] == "linear_1" else 48
        assert np.abs(init).max() <= 1 / np.sqrt(fan_in) and np.abs(init).max() > 0.8 / np.sqrt(fan_in)
        assert not np.array_equal(flat[(parts.PROJECTOR,) + k], init), k
    assert spec.template == "llama3_llava"
    assert spec.tokenizer.convert_tokens_to_ids("<image>") == spec.config.image_token_id == 256
    meta = json.loads((tmp_path / "work" / "export" / "recap_config.json").read_text())
    assert meta["source"]["finetuned_from"] == {"vision_dir": str(root / "clip"), "llm_dir": str(root / "llama"),
                                                "projector_seed": 0}
    assert (tmp_path / "work" / "export_hf" / "config.json").exists()

    out = tmp_path / "captions"
    cmd = [sys.executable, "-m", "recap_jax.caption", f"--config={REPO / 'configs' / 'cpu_small.py'}",
           f"--config.model.checkpoint={summary['export']}", f"--config.input.paths={root / 'images'}",
           f"--config.output.dir={out}", f"--config.prompt={PROMPT}", "--config.decode.max_new_tokens=6",
           "--config.decode.prompt_buckets=(64,)", "--config.distributed.mode=off"]
    result = run_caption(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_output(out)
    assert len(records) + len(list(out.glob("failures-*"))) >= 1
    assert all(int(r["re_caption_length"]) >= 1 for r in records.values()) and all(
        isinstance(text(r["re_caption"]), str) for r in records.values())


def test_parts_config_errors_name_the_field(sources, tmp_path):
    root, _, _, data = sources
    c = _config(root, data, tmp_path / "w")
    c.model.llm_dir = ""
    with pytest.raises(ConfigError, match="model.vision_dir and model.llm_dir"):
        run(c)
    c = _config(root, data, tmp_path / "w")
    c.model.checkpoint = str(root)
    with pytest.raises(ConfigError, match="not both"):
        run(c)
    c = _config(root, data, tmp_path / "w")
    c.model.template = "vicuna"
    with pytest.raises(ConfigError, match="model.template='vicuna'"):
        run(c)
    c = _config(root, data, tmp_path / "w")
    c.model.llm_dir = str(root / "clip")
    with pytest.raises(ConfigError, match="model.llm_dir: .* model_type='clip_vision_model'"):
        run(c)

"""The original LLaVA-repo layout (`LlavaLlamaForCausalLM`, as `tennant/llava-llama-3-8b-hqedit` was
released) converts to exactly the weights and greedy captions of the llava-hf model it was made
from; and an xtuner-style (transformers 4.x) llava-hf folder converts through the llava-hf path.

The original-layout checkpoints are derived from a tiny random llava-hf model by the inverse of
transformers' `convert_llava_weights_to_hf.py` renames, with an original-style config.json,
generation_config.json and no tokenizer or processor files.
"""

import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from recap_jax import convert
from recap_jax.captioning import model_loading
from recap_jax.conversion import bundle
from recap_jax.decoding.sampler import Request, Sampler
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.models.llava import LlavaModel
from recap_jax.preprocess.image import CLIP_MEAN, CLIP_STD, preprocess_image
from recap_jax.captioning.tiny_demo import SPECIAL_TOKENS, WORDS
from tiny_llava import sample_images, save_tiny_llava

PROMPT = "please generate a detailed caption of this image . please be as descriptive as possible ."
HF_IMAGE_ID = 7  # the tiny llava-hf tokenizer's <image>
VOCAB = 256  # tiny_llava_hf_config's vocab_size; the original layout's <image> gets this id


# --- building original-layout checkpoints -------------------------------------------------------

def _original_name(hf_name: str) -> str:
    """llava-hf (as transformers saves it) -> original LLaVA repo tensor name."""
    for old, new in (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
                     ("multi_modal_projector.linear_1.", "model.mm_projector.0."),
                     ("multi_modal_projector.linear_2.", "model.mm_projector.2."),
                     ("vision_tower.", "model.vision_tower.vision_tower.vision_model.")):
        if hf_name.startswith(old):
            return new + hf_name[len(old):]
    raise AssertionError(f"unexpected llava-hf tensor {hf_name}")


def _text_fields_4x(text_config: dict) -> dict:
    """A transformers-5 text_config dict in transformers 4.x spelling (rope_theta, rope_scaling)."""
    tc = dict(text_config)
    rope = tc.pop("rope_parameters")
    tc["rope_theta"] = rope["rope_theta"]
    tc["rope_scaling"] = None if rope["rope_type"] == "default" else {
        k: v for k, v in rope.items() if k != "rope_theta"}
    return tc


def _preprocessor_config(side: int) -> dict:
    """CLIPImageProcessor's preprocessor_config.json, as transformers 4.x writes it."""
    return {"crop_size": {"height": side, "width": side}, "do_center_crop": True, "do_convert_rgb": True,
            "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": list(CLIP_MEAN),
            "image_processor_type": "CLIPImageProcessor", "image_std": list(CLIP_STD), "resample": 3,
            "rescale_factor": 1 / 255, "size": {"shortest_edge": side}}


def write_original(hf_dir: pathlib.Path, out: pathlib.Path, *, tower_inside: bool, aspect: str | None = "pad",
                   **mm_overrides) -> tuple[pathlib.Path, pathlib.Path]:
    """(checkpoint folder, CLIP tower folder) in the original layout, from a llava-hf folder.

    The tower folder always has the CLIP config.json + preprocessor_config.json; it holds the
    weights (as a CLIPModel: `vision_model.*` plus a text tower to ignore) only when the
    checkpoint does not."""
    hf_config = json.loads((hf_dir / "config.json").read_text())
    vision_config = hf_config["vision_config"]
    tensors = load_file(hf_dir / "model.safetensors")
    ckpt, tower = out / "llava-llama3", out / "clip"
    ckpt.mkdir(parents=True)
    tower.mkdir(parents=True)

    original = {_original_name(k): v for k, v in tensors.items()}
    vision = {k: original.pop(k) for k in list(original) if k.startswith("model.vision_tower.")}
    if tower_inside:
        original.update(vision)
    else:
        clip = {k.removeprefix("model.vision_tower.vision_tower."): v for k, v in vision.items()}
        rng = np.random.default_rng(0)
        clip.update({"text_model.embeddings.token_embedding.weight": rng.standard_normal((50, 16), np.float32),
                     "text_projection.weight": rng.standard_normal((16, 16), np.float32),
                     "visual_projection.weight": rng.standard_normal((16, 32), np.float32),
                     "logit_scale": np.ones((), np.float32)})
        save_file(clip, tower / "model.safetensors")
    (tower / "config.json").write_text(json.dumps(
        {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 16,
         "text_config": {"hidden_size": 16}, "vision_config": vision_config}))
    (tower / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(vision_config["image_size"])))

    # Two shards with an index, as save_pretrained writes large models.
    names = sorted(original)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: original[k] for k in keys}, ckpt / file, metadata={"format": "pt"})
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}))

    strategy = {"default": "patch", "full": "cls_patch"}[hf_config["vision_feature_select_strategy"]]
    config = {**_text_fields_4x(hf_config["text_config"]),  # LLaMA fields at the top level
              "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama",
              "mm_vision_tower": "openai/clip-vit-tiny-test", "mm_hidden_size": vision_config["hidden_size"],
              "mm_vision_select_layer": hf_config["vision_feature_layer"], "mm_vision_select_feature": strategy,
              "mm_projector_type": "mlp2x_gelu", "mm_patch_merge_type": "flat", "mm_use_im_start_end": False,
              "mm_use_im_patch_token": False, "tokenizer_padding_side": "right",
              "tokenizer_model_max_length": 2048, "tune_mm_mlp_adapter": False, "use_mm_proj": True,
              "torch_dtype": "float32", "transformers_version": "4.37.2"}
    if aspect is not None:
        config["image_aspect_ratio"] = aspect
    config.update(mm_overrides)
    (ckpt / "config.json").write_text(json.dumps(config, indent=2))
    (ckpt / "generation_config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": 3}))
    return ckpt, tower


def llama3_tokenizer(folder: pathlib.Path) -> pathlib.Path:
    """The tiny tokenizer as the plain LLaMA-3 one would be: no `<image>` (its id 7 is a reserved
    special token instead), every other id unchanged."""
    specials = ["<|reserved_special_token_0|>" if t == "<image>" else t for t in SPECIAL_TOKENS]
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + sorted(set(WORDS)))},
                                      unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", unk_token="<unk>",
        pad_token="<pad>", additional_special_tokens=specials[4:])
    tokenizer.save_pretrained(folder)
    return folder


# --- fixtures --------------------------------------------------------------------------------------

# Tower inside: LLaVA-1.5 defaults (layer -2, CLS dropped, pad). Tower outside: llama3 rope
# scaling, CLS kept, the CLIP processor's crop ("square"), MQA.
CASES = {"tower-inside": dict(hf=dict(pad=True), tower_inside=True, aspect="pad"),
         "tower-outside": dict(hf=dict(pad=False, rope_scaling=True, select_strategy="full", kv_heads=1),
                               tower_inside=False, aspect="square")}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return llama3_tokenizer(tmp_path_factory.mktemp("llama3-tokenizer"))


@pytest.fixture(scope="module", params=sorted(CASES))
def converted(request, tmp_path_factory, tokenizer_dir):
    """(llava-hf converted checkpoint, original-layout converted checkpoint, case)."""
    case = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    hf_dir = save_tiny_llava(root / "hf", seed=5, **case["hf"])
    assert convert.main(["--hf_dir", str(hf_dir), "--out", str(root / "hf-ckpt"), "--dtype", "float32"]) == 0
    ckpt, tower = write_original(hf_dir, root / "original", tower_inside=case["tower_inside"],
                                 aspect=case["aspect"])
    assert not list(ckpt.glob("tokenizer*")) and not (ckpt / "preprocessor_config.json").exists()
    layout = ["--layout", "original"] if case["tower_inside"] else []  # the other case detects it
    assert convert.main(["--hf_dir", str(ckpt), "--out", str(root / "orig-ckpt"), "--dtype", "float32",
                         "--vision_tower_dir", str(tower), "--tokenizer_dir", str(tokenizer_dir), *layout]) == 0
    return root / "hf-ckpt", root / "orig-ckpt", request.param


# --- the original layout --------------------------------------------------------------------------

def test_same_weights_config_and_image_settings(converted):
    hf_ckpt, orig_ckpt, case = converted
    hf_spec, hf_params = model_loading.load_captioner(checkpoint=str(hf_ckpt))
    spec, params = model_loading.load_captioner(checkpoint=str(orig_ckpt))  # the converted folder alone
    assert jax.tree.structure(params) == jax.tree.structure(hf_params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, hf_params)
    # The same model but for where <image> lives: outside the text vocabulary.
    assert spec.config.image_token_id == VOCAB == spec.config.text.vocab_size
    assert dataclasses.replace(spec.config, image_token_id=HF_IMAGE_ID) == hf_spec.config
    assert spec.image == hf_spec.image
    assert spec.image.mode == ("pad" if CASES[case]["aspect"] == "pad" else "crop")
    assert spec.template == "llama3_llava"
    # The saved tokenizer maps the literal <image> to the config's id; the text ids are unchanged.
    assert spec.tokenizer.convert_tokens_to_ids("<image>") == spec.config.image_token_id
    assert 6 in spec.stop_ids and 3 in spec.stop_ids  # <|eot_id|> and generation_config's eos


def test_same_prompt_ids_and_greedy_captions(converted):
    hf_ckpt, orig_ckpt, _ = converted
    hf_spec, hf_params = model_loading.load_captioner(checkpoint=str(hf_ckpt))
    spec, params = model_loading.load_captioner(checkpoint=str(orig_ckpt))
    hf_ids = hf_spec.prompt_encoder().encode(PROMPT)
    ids = spec.prompt_encoder().encode(PROMPT)
    is_image = hf_ids == HF_IMAGE_ID
    assert is_image.sum() == spec.config.num_image_tokens
    np.testing.assert_array_equal(ids, np.where(is_image, VOCAB, hf_ids))

    images = sample_images(3)[:2]
    settings = DecodeSettings(max_new_tokens=24, batch_size=2, prefill_batch=2, prompt_buckets=(64,),
                              steps_per_sync=4, stop_ids=())

    def captions(s, p, prompt_ids):
        sampler = Sampler(LlavaModel(s.config), p, settings)
        requests = [Request(prompt_ids, preprocess_image(im, s.image), i) for i, im in enumerate(images)]
        return {r.tag: r.tokens for r in sampler.generate(iter(requests))}

    ours, reference = captions(spec, params, ids), captions(hf_spec, hf_params, hf_ids)
    for i in range(len(images)):
        assert len(ours[i]) == 24
        np.testing.assert_array_equal(ours[i], reference[i])
    assert not np.array_equal(ours[0], ours[1])  # the image matters: features were merged
    assert spec.tokenizer.decode(ours[0], skip_special_tokens=True).strip()


@pytest.mark.parametrize("converted", ["tower-outside"], indirect=True)  # one run: a subprocess is slow
def test_the_converted_checkpoint_alone_drives_the_caption_command(converted, tmp_path):
    """`python -m recap_jax.caption --config.model.checkpoint=...` (no HF folder, no tokenizer
    folder) writes the captions that the llava-hf original gives for the same images."""
    from caption_helpers import caption_command, read_output, run_caption, text, write_image_folder
    from recap_jax.captioning.defaults import base_config
    from recap_jax.data.images import decode_image

    hf_ckpt, orig_ckpt, _ = converted
    keys = write_image_folder(tmp_path / "images", 3, seed=7, bad=False)
    cmd = [arg for arg in caption_command("unused", tmp_path / "images", tmp_path / "out",
                                          "--config.decode.max_new_tokens=8")
           if not arg.startswith("--config.model.hf_dir")]
    proc = run_caption(cmd + [f"--config.model.checkpoint={orig_ckpt}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_output(tmp_path / "out")

    # The same captions from the llava-hf conversion, decoded in-process.
    spec, params = model_loading.load_captioner(checkpoint=str(hf_ckpt))
    prompt_ids = spec.prompt_encoder().encode(base_config().prompt)
    requests = [Request(prompt_ids, preprocess_image(decode_image(next((tmp_path / "images").glob(f"{k}.*g"))
                                                                  .read_bytes()), spec.image), k) for k in keys]
    settings = DecodeSettings(max_new_tokens=8, batch_size=4, prefill_batch=2, prompt_buckets=(64,),
                              stop_ids=spec.stop_ids)
    expected = {r.tag: spec.tokenizer.decode(r.tokens, skip_special_tokens=True).strip()
                for r in Sampler(LlavaModel(spec.config), params, settings).generate(iter(requests))}
    assert sorted(records) == sorted(k for k in keys if expected[k]) and records
    for key, record in records.items():
        assert text(record["re_caption"]) == expected[key], key


def test_tokenizer_of_a_remote_checkpoint_is_read_through_a_local_copy(converted):
    """transformers reads local folders only; a gs:// checkpoint's tokenizer is copied first."""
    from etils import epath
    _, orig_ckpt, _ = converted
    local = bundle.local_copy(epath.Path(orig_ckpt) / "tokenizer")
    assert local != epath.Path(orig_ckpt) / "tokenizer"
    assert bundle.load_tokenizer(local).convert_tokens_to_ids("<image>") == VOCAB


# --- refusals ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_hf(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("small") / "hf", text_layers=1, vision_layers=2)


@pytest.mark.parametrize("field,value", [("mm_projector_type", "mlp3x_gelu"),
                                         ("mm_vision_select_feature", "cls_only"),
                                         ("image_aspect_ratio", "anyres")])
def test_unknown_llava_settings_are_refused_naming_them(tmp_path, small_hf, tokenizer_dir, capsys, field, value):
    ckpt, tower = write_original(small_hf, tmp_path / "src", tower_inside=False, **{field: value})
    code = convert.main(["--hf_dir", str(ckpt), "--out", str(tmp_path / "out"), "--vision_tower_dir", str(tower),
                         "--tokenizer_dir", str(tokenizer_dir)])
    err = capsys.readouterr().err
    assert code == 2 and field in err and repr(value) in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp*"))


def test_missing_tower_or_tokenizer_is_refused(tmp_path, small_hf, tokenizer_dir, capsys):
    ckpt, tower = write_original(small_hf, tmp_path / "src", tower_inside=False)
    args = ["--hf_dir", str(ckpt), "--out", str(tmp_path / "out")]
    # The tower folder holds the config but the checkpoint has no tower weights and none are given.
    (tower / "model.safetensors").unlink()
    assert convert.main(args + ["--tokenizer_dir", str(tokenizer_dir), "--vision_tower_dir", str(tower)]) == 2
    assert "no *.safetensors" in capsys.readouterr().err
    assert convert.main(args + ["--vision_tower_dir", str(tower)]) == 2
    assert "--tokenizer_dir" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- xtuner-style llava-hf (transformers 4.x) ----------------------------------------------------

def _diff(d: dict, defaults: dict) -> dict:
    """What transformers 4.x writes for a nested config: only the fields that differ from defaults."""
    return {k: v for k, v in d.items() if k not in defaults or defaults[k] != v}


def test_xtuner_style_llava_hf_checkpoint_converts(tmp_path, small_hf):
    """`xtuner/llava-llama-3-8b-hf` style: 4.x tensor names, preprocessor_config.json, a diff-style
    config.json (text_config without the LlamaConfig defaults), no processor_config.json."""
    folder = tmp_path / "xtuner"
    folder.mkdir()
    tensors = load_file(small_hf / "model.safetensors")
    save_file({("vision_tower.vision_model." + k.removeprefix("vision_tower.")
                if k.startswith("vision_tower.") else k): v for k, v in tensors.items()},
              folder / "model.safetensors", metadata={"format": "pt"})
    hf_config = json.loads((small_hf / "config.json").read_text())
    llama_defaults = _text_fields_4x(transformers.LlamaConfig().to_dict() | {
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}})
    text = _diff(_text_fields_4x(hf_config["text_config"]), llama_defaults)
    assert "max_position_embeddings" not in text  # a default that the reader must fill in
    vision = _diff(hf_config["vision_config"], transformers.CLIPVisionConfig().to_dict())
    config = {**{k: v for k, v in hf_config.items() if k not in ("text_config", "vision_config")},
              "text_config": text, "vision_config": vision, "transformers_version": "4.40.0.dev0"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(28)))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (folder / name).write_bytes((small_hf / name).read_bytes())

    assert convert.main(["--hf_dir", str(folder), "--out", str(tmp_path / "ckpt"), "--dtype", "float32",
                         "--template", "llama3_llava"]) == 0
    spec, params = model_loading.load_captioner(checkpoint=str(tmp_path / "ckpt"))
    reference_spec, reference = model_loading.load_captioner(hf_dir=str(small_hf))
    assert spec.config == reference_spec.config
    assert spec.image.mode == "crop" and spec.image.size == 28  # CLIPImageProcessor: no do_pad
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, reference)
    ids = spec.prompt_encoder().encode(PROMPT)
    np.testing.assert_array_equal(ids, reference_spec.prompt_encoder().encode(PROMPT))


# --- the conversation format ----------------------------------------------------------------------

def test_llama3_llava_templates_render_exactly():
    """The LLaMA-3 LLaVA conversation, byte for byte (docs/original_layout.md shows these strings).
    The assistant header ends in "\\n\\n": LLaMA-3 has distinct tokens for "\\n" and "\\n\\n"."""
    from recap_jax.preprocess.text import DEFAULT_PROMPT, LLAVA_SYSTEM_PROMPT, PromptEncoder
    user = ("<|start_header_id|>user<|end_header_id|>\n\n<image>\n" + DEFAULT_PROMPT
            + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert DEFAULT_PROMPT == ("Please generate a detailed caption of this image. "
                              "Please be as descriptive as possible.")
    assert PromptEncoder(None, 0, 0, "llama3_llava").render(DEFAULT_PROMPT) == "<|begin_of_text|>" + user
    assert PromptEncoder(None, 0, 0, "llama3_llava_system").render(DEFAULT_PROMPT) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + LLAVA_SYSTEM_PROMPT
        + "<|eot_id|>" + user)


def test_transformers5_clip_folder_and_unknown_layouts(tmp_path, small_hf, tokenizer_dir, capsys):
    """A CLIPVisionModel saved by transformers 5 (no `vision_model.` prefix) gives the same weights;
    a config that is neither layout is refused naming its model_type."""
    from recap_jax.conversion import original_llava
    from recap_jax.conversion.llava import convert_params
    ckpt, tower = write_original(small_hf, tmp_path / "src", tower_inside=False)
    tower5 = tmp_path / "clip5"
    tower5.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (tower5 / name).write_bytes((tower / name).read_bytes())
    save_file({k.removeprefix("vision_model."): v for k, v in load_file(tower / "model.safetensors").items()
               if k.startswith("vision_model.")}, tower5 / "model.safetensors")
    spec, tensors = original_llava.read_original(ckpt, tokenizer_dir, tower)
    spec5, tensors5 = original_llava.read_original(ckpt, tokenizer_dir, tower5)
    assert spec5.config == spec.config
    jax.tree.map(np.testing.assert_array_equal, convert_params(spec5.config, tensors5),
                 convert_params(spec.config, tensors))

    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "model_type": "llava_next",
                                                  "architectures": ["LlavaNextForConditionalGeneration"]}))
    assert convert.main(["--hf_dir", str(ckpt), "--out", str(tmp_path / "out"), "--vision_tower_dir", str(tower),
                         "--tokenizer_dir", str(tokenizer_dir)]) == 2
    assert "'llava_next'" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_built_in_clip_l14_336_config_when_no_tower_folder():
    """A checkpoint with its tower inside needs no CLIP folder for openai/clip-vit-large-patch14-336."""
    from recap_jax.conversion import original_llava
    from recap_jax.errors import ModelConfigError
    from recap_jax.models.config import VisionConfig
    raw = {"mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": 1024, "image_aspect_ratio": "pad"}
    vision = original_llava.vision_config_for(raw, None)
    assert vision == VisionConfig(hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16,
                                  image_size=336, patch_size=14)
    image = original_llava.image_settings_for(raw, vision, None)
    assert (image.size, image.mode, image.pad_colour) == (336, "pad", (122, 116, 104))  # LLaVA's pad colour
    with pytest.raises(ModelConfigError, match="--vision_tower_dir"):
        original_llava.vision_config_for({"mm_vision_tower": "google/siglip-so400m-patch14-384"}, None)
    with pytest.raises(ModelConfigError, match="mm_hidden_size=768"):
        original_llava.vision_config_for({**raw, "mm_hidden_size": 768}, None)

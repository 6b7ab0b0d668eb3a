"""The original LLaVA-repo checkpoint layout (`LlavaLlamaForCausalLM`, model type `llava_llama`).

This is how the paper's captioner `tennant/llava-llama-3-8b-hqedit` was released: safetensors
shards + `config.json` (LLaMA fields at the top level plus LLaVA's `mm_*` fields) +
`generation_config.json`, and no tokenizer or processor files. Tensor names (the inverse of
transformers' `convert_llava_weights_to_hf.py` KEYS_TO_MODIFY_MAPPING):

    model.embed_tokens.weight, model.layers.{i}.*, model.norm.weight   -> text:...
    lm_head.weight                                                       -> lm_head:weight
    model.mm_projector.0.{weight,bias}, model.mm_projector.2.*          -> projector:linear_1/2.*
    model.vision_tower.vision_tower.vision_model.*  (only if saved)     -> vision:...

When the checkpoint does not hold the CLIP tower (LLaVA-1.5 keeps it frozen and usually does not
save it), it comes from a CLIP folder (`CLIPVisionModel` or `CLIPModel` safetensors, keys
`vision_model.*`), e.g. `openai/clip-vit-large-patch14-336`, which `mm_vision_tower` names. That
folder's `config.json` also gives the vision config and its `preprocessor_config.json` the image
normalisation. The tokenizer is LLaMA-3-8B-Instruct's, named on the command line.

`<image>`: the LLaVA repo never tokenizes the placeholder (it splits the prompt around it and
inserts IMAGE_TOKEN_INDEX=-200). Our PromptEncoder needs a real id, so `<image>` is added to the
saved tokenizer as a special token whose id is the text vocabulary size (128256 for LLaMA-3):
outside the embedding table and the LM head, so it never collides with a text token and can never
be generated; the model replaces those positions with image features before the lookup.
"""

from __future__ import annotations

from typing import Any

import transformers
from etils import epath

from recap_jax.conversion.bundle import CaptionerSpec, load_tokenizer, read_image_processor_config
from recap_jax.conversion.tensors import CheckpointTensors
from recap_jax.errors import ConversionError, ModelConfigError
from recap_jax.models.config import (LlavaConfig, VisionConfig, read_json,
                                     text_config_from_hf, vision_config_from_hf)
from recap_jax.preprocess.image import ImageSettings
from recap_jax.preprocess.text import IMAGE_PLACEHOLDER, stop_token_ids

ORIGINAL_RENAMES = (
    ("model.vision_tower.vision_tower.vision_model.", "vision:"),
    ("model.mm_projector.0.", "projector:linear_1."),
    ("model.mm_projector.2.", "projector:linear_2."),
    ("model.", "text:"),
    ("lm_head.", "lm_head:"),
)

# A HF CLIPVisionModel / CLIPModel folder: `vision_model.*` as transformers 4.x (and the Hub's
# openai/clip-vit-* folders) store it, unprefixed as transformers 5 saves a CLIPVisionModel. A
# CLIPModel's text tower and projections are indexed under names that the converter knows to skip
# (conversion.llava._UNUSED).
CLIP_RENAMES = (
    ("vision_model.", "vision:"),
    ("embeddings.", "vision:embeddings."),
    ("encoder.", "vision:encoder."),
    ("pre_layrnorm.", "vision:pre_layrnorm."),
    ("post_layernorm.", "vision:post_layernorm."),
    ("text_model.", "vision:text_model."),
    ("visual_projection.", "vision:visual_projection."),
    ("text_projection.", "vision:text_projection."),
    ("logit_scale", "vision:logit_scale"),
)

# mm_vision_select_feature -> our select strategy ("patch" drops CLS, as LLaVA-1.5 does).
SELECT_FEATURES = {"patch": "default", "cls_patch": "full"}
PROJECTOR_TYPES = ("mlp2x_gelu",)  # Linear -> GELU -> Linear, with biases (LLaVA-1.5)
# image_aspect_ratio -> ImageSettings.mode. LLaVA's `process_images` pads for "pad" and otherwise
# runs the CLIP processor as is (resize the shortest edge + centre crop).
ASPECT_RATIOS = {"pad": "pad", "square": "crop", None: "crop"}

# Vision configs of the towers LLaVA-1.5 checkpoints name, for when the tower is inside the
# checkpoint and no --vision_tower_dir is given (the tensor shapes are checked against it anyway).
_CLIP_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
KNOWN_TOWERS = {"openai/clip-vit-large-patch14-336": {**_CLIP_L14, "image_size": 336},
                "openai/clip-vit-large-patch14": {**_CLIP_L14, "image_size": 224}}

LAYOUTS = ("llava-hf", "original")


def detect_layout(checkpoint_dir: epath.PathLike) -> str:
    """"original" or "llava-hf", from config.json's model_type / architectures."""
    path = epath.Path(checkpoint_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{checkpoint_dir}: no config.json; is this a LLaVA checkpoint folder?")
    raw = read_json(path)
    model_type, architectures = raw.get("model_type"), raw.get("architectures") or []
    if model_type == "llava_llama" or "LlavaLlamaForCausalLM" in architectures:
        return "original"
    if model_type == "llava" or "LlavaForConditionalGeneration" in architectures:
        return "llava-hf"
    raise ModelConfigError(f"{path}: model_type={model_type!r}, architectures={architectures}: neither a "
                           "llava-hf (LlavaForConditionalGeneration) nor an original LLaVA "
                           "(LlavaLlamaForCausalLM, llava_llama) checkpoint; pass --layout to force one")


def _check_llava_fields(raw: dict[str, Any]) -> None:
    """Refuse LLaVA variants this port does not implement, naming the field."""
    projector = raw.get("mm_projector_type", "linear")
    if projector not in PROJECTOR_TYPES:
        raise ModelConfigError(f"config.json: mm_projector_type={projector!r} is not supported "
                               f"(supported: {PROJECTOR_TYPES})")
    feature = raw.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURES:
        raise ModelConfigError(f"config.json: mm_vision_select_feature={feature!r} is not supported "
                               f"(supported: {sorted(SELECT_FEATURES)})")
    aspect = raw.get("image_aspect_ratio")
    if aspect not in ASPECT_RATIOS:
        raise ModelConfigError(f"config.json: image_aspect_ratio={aspect!r} is not supported "
                               "(supported: 'pad', 'square'; anyres is LLaVA-NeXT)")
    if raw.get("mm_use_im_start_end"):
        raise ModelConfigError("config.json: mm_use_im_start_end=true (<im_start>/<im_end> around the "
                               "image) is not supported")
    merge = raw.get("mm_patch_merge_type", "flat")
    if merge != "flat":
        raise ModelConfigError(f"config.json: mm_patch_merge_type={merge!r} is not supported (only 'flat')")
    layer = raw.get("mm_vision_select_layer", -2)
    if not isinstance(layer, int):
        raise ModelConfigError(f"config.json: mm_vision_select_layer={layer!r}: expected one layer index")


def _vision_folder_config(vision_tower_dir: epath.Path) -> dict[str, Any]:
    """A CLIPVisionConfig dict from a CLIPVisionModel or CLIPModel folder's config.json."""
    path = vision_tower_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"--vision_tower_dir {vision_tower_dir}: no config.json")
    raw = read_json(path)
    return raw["vision_config"] if "vision_config" in raw else raw  # CLIPModel nests it


def vision_config_for(raw: dict[str, Any], vision_tower_dir: epath.Path | None) -> VisionConfig:
    """The vision tower's config: the CLIP folder's, else the known config of `mm_vision_tower`."""
    if vision_tower_dir is not None:
        vision = vision_config_from_hf(_vision_folder_config(vision_tower_dir))
    else:
        tower = str(raw.get("mm_vision_tower", ""))
        known = next((cfg for name, cfg in KNOWN_TOWERS.items() if tower.rstrip("/").endswith(name)), None)
        if known is None:
            raise ModelConfigError(f"config.json: mm_vision_tower={tower!r} is not a tower whose config "
                                   f"is built in ({sorted(KNOWN_TOWERS)}); pass --vision_tower_dir "
                                   "(a CLIP folder, at least its config.json)")
        vision = vision_config_from_hf(known)
    mm_hidden = raw.get("mm_hidden_size")
    if mm_hidden is not None and int(mm_hidden) != vision.hidden_size:
        raise ModelConfigError(f"config.json: mm_hidden_size={mm_hidden} but the vision tower's hidden "
                               f"size is {vision.hidden_size}")
    return vision


def image_settings_for(raw: dict[str, Any], vision: VisionConfig,
                       vision_tower_dir: epath.Path | None) -> ImageSettings:
    """LLaVA's pre-processing: the CLIP processor's settings (from the tower folder, else CLIP
    defaults at the tower's resolution) with `image_aspect_ratio` deciding pad vs crop."""
    pad = ASPECT_RATIOS[raw.get("image_aspect_ratio")] == "pad"
    processor = read_image_processor_config(vision_tower_dir) if vision_tower_dir is not None else None
    image = (ImageSettings.from_hf_processor(processor, pad=pad) if processor is not None
             else ImageSettings(size=vision.image_size, mode="pad" if pad else "crop"))
    if image.size != vision.image_size:
        raise ConversionError(f"the image processor crops to {image.size}px but the vision tower takes "
                              f"{vision.image_size}px")
    return image


def add_image_token(tokenizer: transformers.PreTrainedTokenizerBase, vocab_size: int) -> int:
    """Make the tokenizer map the literal `<image>` to id `vocab_size` (see the module doc)."""
    if len(tokenizer) > vocab_size:
        raise ConversionError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                              f"{vocab_size}: pass the LLaMA-3-8B-Instruct tokenizer the model was trained with")
    existing = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if existing is not None and existing != tokenizer.unk_token_id:
        raise ConversionError(f"the tokenizer already has {IMAGE_PLACEHOLDER!r} as text token {existing}; "
                              "pass the plain LLaMA-3-8B-Instruct tokenizer")
    # Ids between the tokenizer's size and vocab_size (rows added to the embedding in training)
    # are filled with placeholder tokens so that `<image>` lands exactly on vocab_size.
    fillers = [f"<|recap_unused_{i}|>" for i in range(vocab_size - len(tokenizer))]
    tokenizer.add_tokens(fillers + [IMAGE_PLACEHOLDER], special_tokens=True)  # never split, as LLaVA
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if image_id != vocab_size:
        raise ConversionError(f"{IMAGE_PLACEHOLDER} got id {image_id}, expected {vocab_size}")
    return image_id


def llava_config_from_original(raw: dict[str, Any], vision: VisionConfig, image_token_id: int) -> LlavaConfig:
    """An original-layout `config.json` dict (LLaMA fields + mm_* fields) -> LlavaConfig."""
    _check_llava_fields(raw)
    config = LlavaConfig(
        vision=vision, text=text_config_from_hf(raw), image_token_id=image_token_id,
        vision_feature_layer=int(raw.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy=SELECT_FEATURES[raw.get("mm_vision_select_feature", "patch")],
        projector_hidden_act="gelu", projector_bias=True)
    config.num_vision_layers_used  # validates the layer index
    return config


def original_tensors(checkpoint_dir: epath.PathLike, vision_tower_dir: epath.PathLike | None,
                     raw: dict[str, Any] | None = None) -> CheckpointTensors:
    """The checkpoint's tensors, plus the CLIP folder's vision tower when the checkpoint has none."""
    tensors = CheckpointTensors().add_folder(checkpoint_dir, ORIGINAL_RENAMES)
    if any(name.startswith("vision:") for name in tensors.names()):
        return tensors  # the saved (possibly fine-tuned) tower wins over the CLIP folder's
    if vision_tower_dir is None:
        tower = (raw or {}).get("mm_vision_tower", "the CLIP tower")
        raise ConversionError(f"{checkpoint_dir} holds no vision tower (model.vision_tower.vision_tower.*): "
                              f"pass --vision_tower_dir, a local copy of {tower} with safetensors weights")
    if (raw or {}).get("unfreeze_mm_vision_tower"):
        raise ConversionError("config.json: unfreeze_mm_vision_tower=true but the checkpoint holds no vision "
                              "tower: the fine-tuned tower is missing and the CLIP folder's would be wrong")
    return tensors.add_folder(vision_tower_dir, CLIP_RENAMES)


def read_original(checkpoint_dir: epath.PathLike, tokenizer_dir: epath.PathLike | None,
                  vision_tower_dir: epath.PathLike | None = None, template: str | None = None
                  ) -> tuple[CaptionerSpec, CheckpointTensors]:
    """(spec, tensors) of an original-layout checkpoint; nothing is read beyond configs and
    tensor headers, and every config field is checked before any weight is converted."""
    checkpoint_dir = epath.Path(checkpoint_dir)
    vision_dir = epath.Path(vision_tower_dir) if vision_tower_dir else None
    if not (checkpoint_dir / "config.json").exists():
        raise FileNotFoundError(f"{checkpoint_dir}: no config.json; is this a LLaVA checkpoint folder?")
    raw = read_json(checkpoint_dir / "config.json")
    _check_llava_fields(raw)  # unsupported LLaVA variants fail before anything else is read
    if tokenizer_dir is None:
        raise ConversionError("the original LLaVA layout ships no tokenizer: pass --tokenizer_dir, a "
                              "LLaMA-3-8B-Instruct tokenizer folder (tokenizer.json, tokenizer_config.json)")
    vision = vision_config_for(raw, vision_dir)
    image = image_settings_for(raw, vision, vision_dir)
    tensors = original_tensors(checkpoint_dir, vision_dir, raw)
    tokenizer = load_tokenizer(tokenizer_dir)
    vocab_size = text_config_from_hf(raw).vocab_size
    config = llava_config_from_original(raw, vision, add_image_token(tokenizer, vocab_size))
    generation = checkpoint_dir / "generation_config.json"
    eos = read_json(generation).get("eos_token_id") if generation.exists() else None
    spec = CaptionerSpec(config, image, tokenizer, template or "llama3_llava", None,
                         stop_token_ids(tokenizer, eos))
    return spec, tensors

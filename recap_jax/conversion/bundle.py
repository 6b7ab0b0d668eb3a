"""A captioner bundle: weights + everything needed to turn an image into prompt inputs.

This module reads a llava-hf folder (config.json, safetensors, tokenizer, processor config, chat
template), writes the converted checkpoint (`recap_jax.convert`) and reads its spec back
(`read_converted_spec`); the caption job loads its params with `recap_jax.captioning.model_loading`:

    CHECKPOINT/
      recap_config.json   model config, image settings, prompt template, stop tokens, dtype
      tokenizer/          tokenizer files (save_pretrained)
      params/             Orbax checkpoint of the Flax params, written a few params at a time
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from typing import Any

import ml_dtypes
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp
import transformers
from etils import epath
from flax import traverse_util

from recap_jax.conversion.fingerprint import DIGEST_KEY, ParamsDigest
from recap_jax.conversion.llava import LLAVA_HF_RENAMES, converted_leaves  # noqa: F401 (convert.py reads it here)
from recap_jax.conversion.tensors import CheckpointTensors
from recap_jax.data.storage import is_local
from recap_jax.errors import ConversionError
from recap_jax.models.config import LlavaConfig, llava_config_from_hf, read_json
from recap_jax.preprocess.image import ImageSettings
from recap_jax.preprocess.text import PromptEncoder, stop_token_ids

CONFIG_FILE = "recap_config.json"
# Params are handed to Orbax in groups of at least this size (a group closes with the leaf that
# reaches it), each dropped once written: peak host memory follows the largest group, not the model.
SAVE_GROUP_BYTES = 256 * 2**20
# Orbax's folder of the params' arrays inside params/ (its "state" checkpointable).
PYTREE_DIR = "state"
# Storage chunks of at most this size, split along axis 0 (layers, vocabulary rows) first: a
# loader can then read a stacked weight a few layers at a time (captioning/param_reads.py).
STORAGE_CHUNK_BYTES = 8 * 2**20
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


@dataclasses.dataclass
class CaptionerSpec:
    """Everything but the weights."""
    config: LlavaConfig
    image: ImageSettings
    tokenizer: transformers.PreTrainedTokenizerBase
    template: str | None  # a named template (preprocess.text.TEMPLATES) or None
    chat_template: str | None  # the checkpoint's jinja template when `template` is None
    stop_ids: tuple[int, ...]

    def prompt_encoder(self) -> PromptEncoder:
        return PromptEncoder(self.tokenizer, self.config.image_token_id, self.config.num_image_tokens,
                             self.template, self.chat_template)


def param_dtype(name: str):
    """The numpy dtype of a `DTYPES` name."""
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: expected one of {sorted(DTYPES)}")
    return DTYPES[name]


# tokenizer_config.json classes that are the `tokenizers` backend itself: loaded as that class,
# which is what AutoTokenizer builds for them, without AutoTokenizer's import of PyTorch
# (seconds of the caption command's start-up when torch is installed).
FAST_TOKENIZER_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def load_tokenizer(folder: epath.PathLike) -> transformers.PreTrainedTokenizerBase:
    folder = epath.Path(folder)
    if not (folder / "tokenizer.json").exists() and not (folder / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"{folder}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    if is_local(os.fspath(folder)):
        return _tokenizer_from_local(folder)
    local = local_copy(folder)
    try:
        return _tokenizer_from_local(local)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _tokenizer_from_local(folder: epath.Path) -> transformers.PreTrainedTokenizerBase:
    config = folder / "tokenizer_config.json"
    named = read_json(config).get("tokenizer_class") if config.exists() else None
    if named in FAST_TOKENIZER_CLASSES and (folder / "tokenizer.json").exists():
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def local_copy(folder: epath.Path) -> epath.Path:
    """The folder's files copied into a new local temp folder: transformers reads tokenizers from
    local folders only, and a converted checkpoint may live on gs://."""
    local = epath.Path(tempfile.mkdtemp(prefix="recap_tokenizer_"))
    for f in folder.iterdir():
        if f.is_file():
            (local / f.name).write_bytes(f.read_bytes())
    return local


def read_chat_template(folder: epath.PathLike) -> str | None:
    """The processor's chat template (chat_template.jinja / .json), if the folder has one."""
    folder = epath.Path(folder)
    if (folder / "chat_template.jinja").exists():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").exists():
        return json.loads((folder / "chat_template.json").read_text())["chat_template"]
    if (folder / "processor_config.json").exists():
        return json.loads((folder / "processor_config.json").read_text()).get("chat_template")
    return None


def read_image_processor_config(folder: epath.PathLike) -> dict[str, Any] | None:
    """`preprocessor_config.json` (transformers 4.x) or the `image_processor` entry of
    `processor_config.json` (transformers 5.x)."""
    folder = epath.Path(folder)
    if (folder / "preprocessor_config.json").exists():
        return read_json(folder / "preprocessor_config.json")
    if (folder / "processor_config.json").exists():
        return read_json(folder / "processor_config.json").get("image_processor")
    return None


def read_llava_hf_spec(hf_dir: epath.PathLike, tokenizer_dir: epath.PathLike | None = None,
                       template: str | None = None) -> CaptionerSpec:
    """The spec of a llava-hf checkpoint folder (the weights are read separately)."""
    hf_dir = epath.Path(hf_dir)
    if not (hf_dir / "config.json").exists():
        raise FileNotFoundError(f"{hf_dir}: no config.json; is this a llava-hf checkpoint folder?")
    raw = read_json(hf_dir / "config.json")
    config = llava_config_from_hf(raw)
    processor = read_image_processor_config(hf_dir)
    if processor is not None:
        image = ImageSettings.from_hf_processor(processor)
    else:  # no processor config: CLIP defaults at the tower's resolution, LLaVA-1.5's padding
        image = ImageSettings(size=config.vision.image_size, mode="pad")
    if image.size != config.vision.image_size:
        raise ConversionError(f"preprocessor_config.json crops to {image.size}px but the vision tower "
                              f"takes {config.vision.image_size}px")
    tokenizer = load_tokenizer(tokenizer_dir or hf_dir)
    chat_template = None if template else read_chat_template(hf_dir) or tokenizer.chat_template
    generation = hf_dir / "generation_config.json"
    eos = read_json(generation).get("eos_token_id") if generation.exists() else None
    return CaptionerSpec(config, image, tokenizer, template, chat_template, stop_token_ids(tokenizer, eos))


def llava_hf_tensors(hf_dir: epath.PathLike) -> CheckpointTensors:
    return CheckpointTensors().add_folder(hf_dir, LLAVA_HF_RENAMES)


# --- the converted checkpoint -------------------------------------------------------------


def save_converted(out_dir: epath.PathLike, spec: CaptionerSpec,
                   leaves: Iterable[tuple[tuple[str, ...], Any]], dtype: str,
                   source: dict[str, Any], overwrite: bool = False, primary: bool = True,
                   tmp_suffix: str | None = None) -> epath.Path:
    """Write the bundle from (param path, array) pairs, consumed one group at a time.

    Everything goes to a temporary sibling folder that is renamed at the end: a crash, or a
    tensor that does not fit, leaves no half checkpoint under `out_dir`.
    Multi-host: every host calls this with the same `tmp_suffix` (Orbax saves collectively); only
    the `primary` one writes the tokenizer and recap_config.json and renames the folder."""
    out_dir = epath.Path(out_dir)
    if out_dir.exists() and not overwrite and primary:
        raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{tmp_suffix or uuid.uuid4().hex[:8]}"
    if not primary:
        _save_params_in_groups(tmp / "params", leaves)
        return out_dir
    try:
        tmp.mkdir(parents=True, exist_ok=tmp_suffix is not None)
        spec.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        digest = ParamsDigest()
        _save_params_in_groups(tmp / "params", digest.watch(leaves))
        meta = {"llava": spec.config.to_json_dict(), "image": spec.image.to_json_dict(),
                "template": spec.template, "chat_template": spec.chat_template,
                "stop_ids": list(spec.stop_ids), "dtype": dtype, "source": source,
                DIGEST_KEY: digest.hexdigest()}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def read_converted_spec(checkpoint: epath.PathLike, tokenizer_dir: epath.PathLike | None = None
                        ) -> tuple[CaptionerSpec, str]:
    """The spec and stored dtype of a converted checkpoint (what `save_converted` wrote)."""
    checkpoint = epath.Path(checkpoint)
    if not (checkpoint / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{checkpoint}: no {CONFIG_FILE}; convert a checkpoint with "
                                "`python -m recap_jax.convert` first")
    meta = read_json(checkpoint / CONFIG_FILE)
    tokenizer = load_tokenizer(tokenizer_dir or checkpoint / "tokenizer")
    spec = CaptionerSpec(LlavaConfig.from_json_dict(meta["llava"]), ImageSettings.from_json_dict(meta["image"]),
                         tokenizer, meta.get("template"), meta.get("chat_template"),
                         tuple(meta["stop_ids"]))
    return spec, meta["dtype"]


def _save_params_in_groups(path: epath.Path, leaves: Iterable[tuple[tuple[str, ...], Any]]) -> None:
    storage = ocp.options.ArrayOptions.Saving.StorageOptions(chunk_byte_size=STORAGE_CHUNK_BYTES, shard_axes=(0,))
    with ocp.Context(array_options=ocp.options.ArrayOptions(saving=ocp.options.ArrayOptions.Saving(
            storage_options=storage))):
        _save_groups(path, leaves)


def _save_groups(path: epath.Path, leaves: Iterable[tuple[tuple[str, ...], Any]]) -> None:
    # A full group is saved before the next leaf is read, so a group and Orbax's copy of it are
    # never in memory beside a freshly read leaf.
    group: dict = {}
    group_bytes = 0
    for leaf_path, value in leaves:
        group[leaf_path] = value
        group_bytes += value.nbytes
        if group_bytes >= SAVE_GROUP_BYTES:
            ocp.partial.save(path, traverse_util.unflatten_dict(group))
            group, group_bytes = {}, 0
    if group:
        ocp.partial.save(path, traverse_util.unflatten_dict(group))
    ocp.partial.finalize(path)

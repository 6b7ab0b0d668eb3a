"""Start-up checks of the caption job: what can be known before loading weights is checked first.

- the config itself (fields that other checks would blame on a neighbour, folders that clash);
- gs:// reachable and the output writable, with a short timeout (no credentials or no network
  must fail in seconds, not after a minute of retries);
- the model's limits: the prompt fits a decode bucket, prompt + max_new_tokens fit the positions
  the model was trained for, and the decode state fits the device memory.
"""

from __future__ import annotations

import contextlib
import json
import struct
import uuid
from typing import Any

import jax
import ml_collections
import numpy as np
import psutil
from etils import epath
from jax.sharding import Mesh

from recap_jax.captioning import model_loading
from recap_jax.captioning.prompts import CaptionPrompt
from recap_jax.conversion import bundle
from recap_jax.data import identity as identity_lib
from recap_jax.data import storage
from recap_jax.data.inputs.paths import split_paths
from recap_jax.decoding.settings import DecodeSettings
from recap_jax.errors import ConfigError, ConversionError, UserError
from recap_jax.models.config import LlavaConfig
from recap_jax.models.flops import parameter_count
from recap_jax.parallel import mesh as mesh_lib

# Share of the device memory the weights + decode state may take (XLA needs the rest for
# activations and temporaries).
MEMORY_HEADROOM = 0.9


def check_config(config: ml_collections.ConfigDict) -> None:
    """Config checks beyond single fields: each error names the field at fault."""
    d = config.decode
    for field in ("batch_size", "prefill_batch", "max_new_tokens"):
        if d[field] < 1:
            raise ConfigError(f"decode.{field}={d[field]}: must be >= 1")
    share = config.output.max_failure_share
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"output.max_failure_share={share}: must be in [0, 1]")
    if config.output.lease_stale_s <= 0:
        raise ConfigError(f"output.lease_stale_s={config.output.lease_stale_s}: must be > 0")
    out = config.output.dir
    if out and "://" not in out:
        path = epath.Path(identity_lib.absolute(out))
        existing = next(p for p in [path, *path.parents] if p.exists())
        if existing == path and not path.is_dir():
            raise ConfigError(f"{out}: output.dir is a file; give a folder (new or of an earlier run)")
        if not existing.is_dir():
            raise ConfigError(f"{out}: output.dir cannot be created ({existing} is a file)")
        probe = existing / f".recap-write-probe-{uuid.uuid4().hex[:8]}"
        try:  # os.access says yes to root even where the file system says no (/proc, read-only mounts)
            probe.mkdir()
            probe.rmdir()
        except OSError as e:
            raise ConfigError(f"{out}: output.dir cannot be written ({existing}: {e.strerror or e}); "
                              "choose a folder you can write") from None
        for root in input_roots(config.input.paths):
            if storage.is_inside(str(path), str(root)):
                raise ConfigError(f"output.dir: {out} is inside input.paths ({root}): the next run would "
                                  "read its own output; put it elsewhere")


def input_roots(paths: str) -> list[epath.Path]:
    """The fixed (wildcard-free) local folder of each input.paths entry."""
    roots = []
    for pattern in split_paths(paths):
        if "://" in pattern:
            continue
        parts = identity_lib.absolute(pattern).split("/")
        fixed = [p for p in parts[:next((i for i, p in enumerate(parts) if any(c in p for c in "*?[{")),
                                        len(parts))]]
        root = epath.Path("/".join(fixed) or "/")
        roots.append(root if root.is_dir() or not root.exists() else root.parent)
    return roots


# --- gs:// ---------------------------------------------------------------------------------------


def remote_paths(config: ml_collections.ConfigDict) -> dict[str, str]:
    """field -> a gs:// path it reads or writes."""
    found = {}
    for field, value in (("model.checkpoint", config.model.checkpoint), ("model.hf_dir", config.model.hf_dir),
                         ("model.tokenizer", config.model.tokenizer), ("output.dir", config.output.dir)):
        if value.startswith("gs://"):
            found[field] = value
    for pattern in split_paths(config.input.paths or ""):
        if pattern.startswith("gs://"):
            found.setdefault("input.paths", pattern)
    return found


def check_remote(config: ml_collections.ConfigDict, timeout_s: float) -> None:
    """Each gs:// path's bucket reachable (the output writable) within `timeout_s` seconds."""
    storage.check_reachable(remote_paths(config), timeout_s, writable=("output.dir",))


# --- the model's limits ---------------------------------------------------------------------


def read_spec(config: ml_collections.ConfigDict) -> bundle.CaptionerSpec:
    """The model's spec (config, tokenizer, template) without its weights."""
    m = config.model
    field, folder = ("model.checkpoint", m.checkpoint) if m.checkpoint else ("model.hf_dir", m.hf_dir)
    try:
        if m.checkpoint:
            spec, _ = model_loading.read_converted_spec(m.checkpoint, m.tokenizer or m.hf_dir or None)
            if m.template:
                spec.template = m.template
            return spec
        check_safetensors(m.hf_dir)
        return bundle.read_llava_hf_spec(m.hf_dir, m.tokenizer or None, m.template or None)
    except (OSError, ValueError, KeyError) as e:
        if isinstance(e, ConfigError):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConversionError(f"{field}: {folder} cannot be read as a captioner ({type(e).__name__}: "
                              f"{first[:300]})") from None


def check_safetensors(folder: str) -> None:
    """Each safetensors file's header parses and its tensors end where the file ends (a truncated
    download fails here, naming the file)."""
    for path in epath.Path(folder).glob("*.safetensors"):
        size = path.stat().length
        with path.open("rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            header = f.read(n) if 0 < n <= size - 8 else b""
        try:
            tensors = {k: v for k, v in json.loads(header).items() if k != "__metadata__"}
            end = 8 + n + max((v["data_offsets"][1] for v in tensors.values()), default=0)
        except (ValueError, KeyError, TypeError):
            end = -1
        if end != size:
            raise ConversionError(f"model.hf_dir: {path} is truncated or damaged ({size} bytes"
                                  + (f", its header says {end})" if end > 0 else ", unreadable header)")
                                  + "; download it again")


def _mesh_sizes(config: ml_collections.ConfigDict, devices: int) -> dict[str, int]:
    fsdp, tensor = max(config.mesh.fsdp, 1), max(config.mesh.tensor, 1)
    data = config.mesh.data if config.mesh.data > 0 else max(devices // (fsdp * tensor), 1)
    return {"data": data, "fsdp": fsdp, "tensor": tensor}


def decode_memory_bytes(model: LlavaConfig, config: ml_collections.ConfigDict, devices: int,
                        cache_length: int) -> int:
    """Per device: the weights' share plus the decode state's (KV cache, generated tokens)."""
    d, t = config.decode, model.text
    itemsize = np.dtype(bundle.DTYPES[config.model.dtype]).itemsize
    mesh = _mesh_sizes(config, devices)
    weights = parameter_count(model) * itemsize / (mesh["fsdp"] * mesh["tensor"])
    cache = 2 * t.num_layers * d.batch_size * cache_length * t.num_kv_heads * t.head_dim * itemsize
    generated = d.batch_size * d.max_new_tokens * 4
    logits = d.prefill_batch * t.vocab_size * 4
    return int(weights + (cache + generated + logits) / (mesh["data"] * mesh["fsdp"]))


def device_memory_bytes() -> tuple[int, str]:
    """(bytes, what) of one local device: its allocator limit, or on CPU the host's available
    memory shared by its devices."""
    devices = jax.local_devices()
    stats: dict[str, Any] | None = None
    try:
        stats = devices[0].memory_stats()
    except Exception:  # noqa: BLE001 - not every backend reports
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{devices[0].device_kind} memory"
    return psutil.virtual_memory().available // len(devices), "available host memory per CPU device"


def check_mesh(config: ml_collections.ConfigDict) -> Mesh:
    """This host's mesh; it fits the devices and the decode batches split over its replicas."""
    mesh = mesh_lib.make_mesh(dict(config.mesh), jax.local_devices())
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    for field in ("batch_size", "prefill_batch"):
        if config.decode[field] % batch_shards:
            raise ConfigError(f"decode.{field}={config.decode[field]} must be a multiple of "
                              f"mesh.data x mesh.fsdp = {batch_shards}")
    return mesh


def check_limits(config: ml_collections.ConfigDict, spec: bundle.CaptionerSpec) -> int:
    """The prompt's and decode state's fit; returns the prompt length in tokens."""
    check_mesh(config)
    d = config.decode
    # The prompt without its {org_caption} slot: an alt-text's tokens come on top, per image.
    prompt = CaptionPrompt(spec.prompt_encoder(), config.prompt)
    prompt_length = len(prompt.fixed_ids)
    settings = DecodeSettings.from_config(d).for_prompt(prompt_length, prompt.conditioned)
    if prompt_length > settings.max_prompt_length:
        raise ConfigError(f"prompt: {prompt_length} tokens (with the image's) exceed the largest "
                          f"decode.prompt_buckets entry ({settings.max_prompt_length}); shorten the prompt or add "
                          f"a bucket >= {prompt_length}")
    limit = spec.config.text.max_position_embeddings
    if prompt_length + d.max_new_tokens > limit:
        raise ConfigError(f"decode.max_new_tokens={d.max_new_tokens}: with the {prompt_length}-token prompt "
                          f"it needs {prompt_length + d.max_new_tokens} positions, past the model's "
                          f"max_position_embeddings ({limit}); use at most {limit - prompt_length}")
    need = decode_memory_bytes(spec.config, config, len(jax.local_devices()), settings.cache_length)
    have, what = device_memory_bytes()
    if need > MEMORY_HEADROOM * have:
        raise ConfigError(f"decode: weights + decode state need ~{need / 2**30:.2f} GiB per device, more than "
                          f"{MEMORY_HEADROOM:.0%} of the {have / 2**30:.2f} GiB {what}; lower decode.batch_size, "
                          "decode.max_new_tokens or the largest decode.prompt_buckets entry, or shard "
                          "wider (mesh.fsdp)")
    return prompt_length


@contextlib.contextmanager
def weights_errors(config: ml_collections.ConfigDict):
    """A checkpoint whose weights cannot be read (truncated, damaged) is the user's to fix: say
    which one, in one line."""
    try:
        yield
    except (UserError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001
        m = config.model
        field, folder = ("model.checkpoint", m.checkpoint) if m.checkpoint else ("model.hf_dir", m.hf_dir)
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConversionError(f"{field}: the weights in {folder} cannot be read ({type(e).__name__}: "
                              f"{first[:300]}); convert or download the checkpoint again") from e

"""Decode settings: defined once, read by the config defaults and by the sampler.

`captioning/defaults.py` builds `config.decode` from `DecodeSettings()`, and the caption job turns
`config.decode` back into `DecodeSettings` with `from_config`; a field added here is a config field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

SAMPLING_MODES = ("greedy", "top_k", "top_p")
# A prompt holding this slot is encoded per sample with the sample's alt-text in it
# (captioning/prompts.py); its buckets leave room for the alt-text (`for_prompt`).
ORG_CAPTION_SLOT = "{org_caption}"
# Alt-text tokens the derived buckets of an `{org_caption}` prompt leave room for (a longer
# alt-text is listed as a failure); set decode.prompt_buckets to allow more.
CONDITIONED_EXTRA = (32, 64, 128)
ATTENTION_CHOICES = ("auto", "xla", "ragged")


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int = 128  # caption length cap (the paper: 128)
    batch_size: int = 16  # decode slots kept in flight (captions in flight per host)
    prefill_batch: int = 4  # prompts prefilled together when slots free up
    # Padded prompt lengths (one prefill compile each). Empty: derived from the prompt
    # (`for_prompt`): its own length, or for an `{org_caption}` prompt its length plus
    # CONDITIONED_EXTRA tokens of alt-text; set them only to override.
    prompt_buckets: tuple[int, ...] = ()
    # The KV cache holds the longest prompt + max_new_tokens, rounded up to this many positions
    # (128: a TPU tile; smaller on CPU, where a rounded-up tail is read for nothing).
    cache_tile: int = 128
    steps_per_sync: int = 8  # decode steps per device call between host checks
    # How each next token is chosen: "greedy" (argmax, the paper's run), "top_k" (sample among the
    # `top_k` likeliest) or "top_p" (sample from the smallest set holding `top_p` of the mass).
    sampling: str = "greedy"
    top_k: int = 50  # candidates for sampling="top_k" (1 = greedy)
    top_p: float = 0.9  # probability mass for sampling="top_p"
    temperature: float = 1.0  # logits are divided by it before sampling (not used by greedy)
    # Sampling draws from a key derived from (seed, the sample's key, the token's position): the
    # same image gets the same caption whatever the batch, the device count or a resume.
    seed: int = 0
    # Decode attention over the KV cache: "ragged" reads only each slot's live cache blocks
    # (kernels/ragged_decode.py, a Pallas TPU kernel; on CPU it runs in interpret mode: slow, for
    # tests), "xla" reads the whole cache with a mask (models/attention.py::decode_attention), "auto"
    # the kernel on TPU and XLA elsewhere. The captions are the same up to rounding.
    attention: str = "auto"
    stop_ids: tuple[int, ...] = ()  # from the checkpoint, not a config field

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"decode.max_new_tokens={self.max_new_tokens}: must be >= 1")
        if not 1 <= self.prefill_batch <= self.batch_size:
            raise ValueError(f"decode.prefill_batch={self.prefill_batch}: must be in 1..decode.batch_size"
                             f" ({self.batch_size})")
        if self.cache_tile < 1:
            raise ValueError(f"decode.cache_tile={self.cache_tile}: must be >= 1")
        if any(b < 1 for b in self.prompt_buckets):
            raise ValueError(f"decode.prompt_buckets={self.prompt_buckets}: lengths must be >= 1")
        if self.steps_per_sync < 1:
            raise ValueError(f"decode.steps_per_sync={self.steps_per_sync}: must be >= 1")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"decode.sampling={self.sampling!r}: expected one of {', '.join(SAMPLING_MODES)}")
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"decode.attention={self.attention!r}: expected one of {', '.join(ATTENTION_CHOICES)}")
        if self.top_k < 1:
            raise ValueError(f"decode.top_k={self.top_k}: must be >= 1")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"decode.top_p={self.top_p}: must be in (0, 1]")
        if self.temperature <= 0.0:
            raise ValueError(f"decode.temperature={self.temperature}: must be > 0 (use sampling=greedy)")

    def for_prompt(self, prompt_length: int, conditioned: bool = False) -> DecodeSettings:
        """These settings with the buckets derived from the prompt when none are set: one prompt,
        one length (prefill pads to it); an `{org_caption}` prompt (`prompt_length` without the
        alt-text) gets a few buckets for its alt-text."""
        if self.prompt_buckets:
            return self
        extra = CONDITIONED_EXTRA if conditioned else (0,)
        return dataclasses.replace(self, prompt_buckets=tuple(prompt_length + e for e in extra))

    def _check_resolved(self) -> None:
        if not self.prompt_buckets:
            raise ValueError("decode.prompt_buckets is empty: resolve the settings with for_prompt(prompt length)")

    def bucket(self, length: int) -> int:
        self._check_resolved()
        for b in sorted(self.prompt_buckets):
            if length <= b:
                return b
        raise ValueError(f"prompt of {length} tokens exceeds the largest decode.prompt_buckets entry "
                         f"({max(self.prompt_buckets)})")

    @property
    def cache_length(self) -> int:
        """Positions per slot: the longest prompt + max_new_tokens, rounded up to `cache_tile`."""
        return -(-(self.max_prompt_length + self.max_new_tokens) // self.cache_tile) * self.cache_tile

    @property
    def max_prompt_length(self) -> int:
        self._check_resolved()
        return max(self.prompt_buckets)

    @classmethod
    def config_fields(cls) -> dict[str, Any]:
        """The config fields and their defaults (everything but the checkpoint's stop ids)."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.name != "stop_ids"}

    @classmethod
    def from_config(cls, decode: Mapping[str, Any], stop_ids: tuple[int, ...] = ()) -> DecodeSettings:
        values = {name: decode[name] for name in cls.config_fields()}
        values["prompt_buckets"] = tuple(values["prompt_buckets"])
        return cls(**values, stop_ids=tuple(stop_ids))

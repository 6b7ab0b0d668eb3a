"""The caption prompt's token ids, per sample when the prompt has an `{org_caption}` slot."""

from __future__ import annotations

import numpy as np

from recap_jax.decoding.settings import ORG_CAPTION_SLOT
from recap_jax.preprocess.text import PromptEncoder


class CaptionPrompt:
    """`prompt` encoded once, or, with an `{org_caption}` slot, once per sample with the sample's
    original caption in the slot (the slot is plain text substitution: other braces stay)."""

    def __init__(self, encoder: PromptEncoder, prompt: str):
        self.encoder, self.prompt = encoder, prompt
        self.conditioned = ORG_CAPTION_SLOT in prompt
        # Without the slot every image shares these ids; with it, they show the prompt's shape.
        self.fixed_ids = encoder.encode(prompt.replace(ORG_CAPTION_SLOT, ""))

    def text(self, org_caption: str) -> str:
        return self.prompt.replace(ORG_CAPTION_SLOT, org_caption.strip())

    def token_ids(self, org_caption: str) -> np.ndarray:
        if not self.conditioned:
            return self.fixed_ids
        return self.encoder.encode(self.text(org_caption))

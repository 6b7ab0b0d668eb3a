"""Prompt token ids: chat template + tokenizer, with `<image>` expanded to the image tokens.

The chat template is the checkpoint's own (llava-hf processors ship one) or a named template
from `TEMPLATES` (the original LLaVA layout ships none).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jinja2
import numpy as np
import transformers

IMAGE_PLACEHOLDER = "<image>"

# The paper's recaptioning prompt.
DEFAULT_PROMPT = ("Please generate a detailed caption of this image. "
                  "Please be as descriptive as possible.")

# LLaVA-LLaMA-3 as trained by the paper: a system-less user turn, the image placeholder on its
# own line before the prompt, then the assistant header; the answer ends at <|eot_id|>.
LLAMA3_LLAVA_TEMPLATE = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    "<image>\n{{ prompt }}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")

# The same with the system turn of LLaVA-NeXT's `conv_llava_llama_3` (and LLaVA++'s LLaMA-3
# template), for checkpoints trained with that conversation instead.
LLAVA_SYSTEM_PROMPT = ("You are a helpful language and vision assistant. You are able to understand the "
                       "visual content that the user provides, and assist the user with a variety of tasks "
                       "using natural language.")
LLAMA3_LLAVA_SYSTEM_TEMPLATE = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + LLAVA_SYSTEM_PROMPT + "<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "<image>\n{{ prompt }}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")

TEMPLATES = {"llama3_llava": LLAMA3_LLAVA_TEMPLATE, "llama3_llava_system": LLAMA3_LLAVA_SYSTEM_TEMPLATE}

# The last user turn's content as a HF chat template writes it (a string, or image/text parts).
_HF_TURN = ("{% set content = messages[-1]['content'] %}{% if content is string %}{{ content }}{% else %}"
            "{% for part in content %}{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}"
            "{% endif %}{% endfor %}{% endif %}")


def hf_chat_template(template: str) -> str:
    """A named template as a processor chat template: `apply_chat_template` on one user turn
    [image, prompt] renders exactly what `PromptEncoder.render(prompt)` renders (llava-hf export)."""
    if template not in TEMPLATES:
        raise ValueError(f"prompt template {template!r}: known templates are {sorted(TEMPLATES)}")
    # HF renders with jinja's default of dropping the template's final newline: end on an expression.
    return TEMPLATES[template].replace("<image>\n{{ prompt }}", _HF_TURN) + "{{ '' }}"


@dataclasses.dataclass
class PromptEncoder:
    """Turns a text prompt into the token ids the model prefills (image tokens expanded)."""
    tokenizer: transformers.PreTrainedTokenizerBase
    image_token_id: int
    num_image_tokens: int
    # A key of TEMPLATES, or None to use the tokenizer's/processor's own chat template.
    template: str | None = None
    chat_template: str | None = None  # the checkpoint's jinja chat template, if any

    def render(self, prompt: str) -> str:
        if self.template is not None:
            if self.template not in TEMPLATES:
                raise ValueError(f"prompt template {self.template!r}: known templates are {sorted(TEMPLATES)}")
            # keep_trailing_newline: jinja would otherwise drop the last "\n" of the assistant
            # header's "\n\n" (LLaMA-3 tokenizes "\n\n" and "\n" differently).
            env = jinja2.Environment(keep_trailing_newline=True)
            return env.from_string(TEMPLATES[self.template]).render(prompt=prompt)
        chat_template = self.chat_template or getattr(self.tokenizer, "chat_template", None)
        if not chat_template:
            raise ValueError("the checkpoint has no chat template; name one with model.template "
                             f"(one of {sorted(TEMPLATES)})")
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.tokenizer.apply_chat_template(conversation, chat_template=chat_template,
                                                  add_generation_prompt=True, tokenize=False)

    def encode(self, prompt: str) -> np.ndarray:
        """Prompt text -> int32 ids, exactly one `<image>` expanded to `num_image_tokens` ids."""
        text = self.render(prompt)
        if text.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"the rendered prompt must hold exactly one {IMAGE_PLACEHOLDER}, got {text!r}")
        ids = self.tokenize(text)
        return np.asarray(self.expand_image(ids, self.image_position(ids), self.image_token_id), np.int32)

    def tokenize(self, text: str, first: bool = True) -> list[int]:
        """`text`'s ids. The tokenizer adds its BOS to the `first` piece of a sequence, unless the
        template wrote one itself (no second BOS)."""
        bos = self.tokenizer.bos_token
        add_special = first and not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def image_position(self, ids: list[int]) -> int:
        """The index of the one `<image>` id in `ids`; ValueError unless there is exactly one."""
        positions = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(positions) != 1:
            raise ValueError(f"{IMAGE_PLACEHOLDER} must tokenize to the single id {self.image_token_id}; "
                             f"got {len(positions)} occurrences")
        return positions[0]

    def expand_image(self, values: list, at: int, fill: Any) -> list:
        """`values` (ids, or anything aligned with them) with the item at `at` replaced by one
        `fill` per image token."""
        return values[:at] + [fill] * self.num_image_tokens + values[at + 1:]


def stop_token_ids(tokenizer: transformers.PreTrainedTokenizerBase,
                   generation_eos: int | list[int] | None = None) -> tuple[int, ...]:
    """End-of-turn/EOS ids: the generation config's, the tokenizer's EOS and `<|eot_id|>`."""
    ids = set()
    if generation_eos is not None:
        ids.update([generation_eos] if isinstance(generation_eos, int) else generation_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        ids.add(eot)
    return tuple(sorted(ids))

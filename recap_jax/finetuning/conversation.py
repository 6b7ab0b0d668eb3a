"""A LLaVA conversation -> token ids and the positions that carry a loss (assistant turns only).

The text of each turn comes from the checkpoint's own chat template (or a named template), so
the prompt the model is trained on is token for token the prompt `recap_jax.caption` feeds it.
Assistant spans are found by rendering the conversation up to each assistant turn with and
without that turn: the difference is the answer plus the template's end-of-turn marker, which
are the tokens LLaVA trains on (the model must learn to stop).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from recap_jax.preprocess.text import IMAGE_PLACEHOLDER, PromptEncoder

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system"}
# The end-of-turn marker that named (LLaMA-3) templates put after an answer.
NAMED_TEMPLATE_END_OF_TURN = "<|eot_id|>"
_PLACEHOLDER_WITH_NEWLINE = re.compile(r"\s*<image>\s*")


class ConversationError(ValueError):
    """A conversation that cannot be trained on; the message is the failure reason."""


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Token ids (image placeholder expanded) and which of them are assistant tokens."""
    token_ids: np.ndarray  # int32 [S]
    is_target: np.ndarray  # bool [S]


def llava_turns(conversations: list[dict]) -> list[tuple[str, str]]:
    """LLaVA's `[{"from": "human", "value": ...}, ...]` -> [(role, text)], roles as in chat templates."""
    turns = []
    for turn in conversations:
        if not isinstance(turn, dict) or "value" not in turn:
            raise ConversationError("conversation turn without 'from'/'value'")
        role = ROLES.get(str(turn.get("from", turn.get("role", ""))).lower())
        if role is None:
            raise ConversationError(f"unknown speaker {turn.get('from')!r} (expected human or gpt)")
        turns.append((role, str(turn["value"])))
    return turns


def caption_turns(prompt: str, caption: str) -> list[tuple[str, str]]:
    """A caption pair as the one-turn conversation the captioner is asked at inference."""
    return [("user", f"{IMAGE_PLACEHOLDER}\n{prompt}"), ("assistant", caption)]


def _message(role: str, text: str) -> dict:
    """llava-hf's message format: an image part where the text had `<image>`, then the text."""
    if IMAGE_PLACEHOLDER not in text:
        return {"role": role, "content": [{"type": "text", "text": text}]}
    rest = _PLACEHOLDER_WITH_NEWLINE.sub("\n", text, count=1).strip()
    return {"role": role, "content": [{"type": "image"}, {"type": "text", "text": rest}]}


class ConversationEncoder:
    """Encodes conversations with a `PromptEncoder`'s tokenizer and template."""

    def __init__(self, prompts: PromptEncoder):
        self.prompts = prompts
        self.tokenizer = prompts.tokenizer

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        template = self.prompts.chat_template or getattr(self.tokenizer, "chat_template", None)
        return self.tokenizer.apply_chat_template(messages, chat_template=template,
                                                  add_generation_prompt=add_generation_prompt,
                                                  tokenize=False)

    def segments(self, turns: list[tuple[str, str]]) -> list[tuple[str, bool]]:
        """The conversation's text as (piece, is_assistant_answer) in order."""
        if not any(role == "assistant" for role, _ in turns):
            raise ConversationError("no gpt turn (nothing to train on)")
        if sum(text.count(IMAGE_PLACEHOLDER) for _, text in turns) != 1:
            raise ConversationError(f"expected exactly one {IMAGE_PLACEHOLDER} in the conversation")
        if self.prompts.template is not None:
            return self._named_template_segments(turns)
        messages = [_message(role, text) for role, text in turns]
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, (role, _) in enumerate(turns):
            if role != "assistant":
                continue
            before = self._render(messages[:i], add_generation_prompt=True)
            after = self._render(messages[:i + 1], add_generation_prompt=False)
            if not before.startswith(done) or not after.startswith(before):
                raise ConversationError("the chat template does not render turns as a growing prefix")
            pieces += [(before[len(done):], False), (after[len(before):], True)]
            done = after
        return [(text, target) for text, target in pieces if text]

    def _named_template_segments(self, turns):
        if [role for role, _ in turns] != ["user", "assistant"]:
            raise ConversationError("a named prompt template takes one user turn and one gpt turn; "
                                    "multi-turn data needs the checkpoint's chat template")
        prompt = _PLACEHOLDER_WITH_NEWLINE.sub(" ", turns[0][1]).strip()
        return [(self.prompts.render(prompt), False), (turns[1][1] + NAMED_TEMPLATE_END_OF_TURN, True)]

    def encode(self, turns: list[tuple[str, str]]) -> Encoded:
        p = self.prompts
        ids: list[int] = []
        target: list[bool] = []
        for n, (text, is_answer) in enumerate(self.segments(turns)):
            piece = p.tokenize(text, first=n == 0)
            ids += piece
            target += [is_answer] * len(piece)
        try:
            at = p.image_position(ids)
        except ValueError as e:
            raise ConversationError(str(e)) from None
        return Encoded(np.asarray(p.expand_image(ids, at, p.image_token_id), np.int32),
                       np.asarray(p.expand_image(target, at, False), bool))

"""Plain text for continued pretraining (`wb pt`): the text's tokens plus the end-of-text token, all trained; the
tokenizer's begin-of-text token first where the tokenizer adds one to a text (Llama-3, Gemma, Mistral)."""
from __future__ import annotations

from typing import Sequence

from .base import Template, TemplateSpec


def _no_chat(*_args, **_kw):
    raise TypeError("the pretraining text template renders no conversations")


class TextTemplate(Template):
    def __init__(self, tokenizer):
        eos = tokenizer.eos_token or ""
        super().__init__(TemplateSpec("text", _no_chat, (eos,) if eos else (), {}, "plain text + eos"), tokenizer,
                         "all")
        self.eos_id = tokenizer.eos_token_id
        bos = tokenizer.bos_token_id
        self.bos = [bos] if bos is not None and tokenizer("x")["input_ids"][:1] == [bos] else []

    def encode_batch(self, rows: Sequence[dict], **opts) -> list[dict]:
        out = []
        for ids, _ in self._tokenize([r["text"] for r in rows]):
            ids = self.bos + list(ids) + ([self.eos_id] if self.eos_id is not None else [])
            out.append({"input_ids": ids, "labels": list(ids), "length": len(ids)})
        return out

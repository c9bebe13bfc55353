"""Generated ids -> text as it is generated: incremental decoding, stop strings, what is safe to show; and the
bytes one token stands for (log-probs)."""
from __future__ import annotations

import re
from functools import lru_cache


class TextStream:
    """The text of one completion, token by token.

    Decoding is incremental (the scheme of vLLM and TGI): each new token is decoded together with a few
    tokens before it, and only the text past those tokens' own decoding is new. Decoding a window instead of
    everything so far keeps the cost per token constant; starting both decodes at the same token makes the
    difference exact for tokenizers whose decoding of a piece depends on what precedes it (SentencePiece's
    leading space). Text ending in a partial UTF-8 character (U+FFFD) waits for the next token.

    Stop strings: the text is searched for them as it grows; the completion ends before the first one found.
    The visible text holds back any tail that could still become a stop string.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.text = ""           # decoded so far (complete characters only), cut at a stop string
        self.shown = 0           # characters of `text` handed out
        self.stopped = False     # a stop string was found
        self._prefix = 0         # ids[_prefix:_read] were decoded last time, as context for the next token
        self._read = 0
        self._prefix_text = ""
        self._searched = 0       # stop strings cannot start before this offset of `text`

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def push(self, token_id: int) -> str:
        """Add a token; return the newly visible text ("" while held back)."""
        self.ids.append(token_id)
        self._advance(final=False)
        return self._visible(final=False)

    def finish(self) -> str:
        """The text still held back (the completion ended for another reason than a stop string)."""
        if not self.stopped:
            self._advance(final=True)
        return self._visible(final=True)

    def _advance(self, final: bool) -> None:
        new_text = self._decode(self.ids[self._prefix:])
        if len(new_text) <= len(self._prefix_text) or (new_text.endswith("\ufffd") and not final):
            return
        self.text += new_text[len(self._prefix_text):]
        self._prefix, self._read = self._read, len(self.ids)
        self._prefix_text = self._decode(self.ids[self._prefix:self._read])
        self._find_stop()

    def _find_stop(self) -> None:
        if not self.stop:
            return
        longest = max(len(s) for s in self.stop)
        hits = [i for s in self.stop if (i := self.text.find(s, self._searched)) >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True
        else:
            self._searched = max(0, len(self.text) - longest + 1)

    def _visible(self, final: bool) -> str:
        end = len(self.text)
        if not final and not self.stopped:
            end -= self._held_back()
        out = self.text[self.shown:end] if end > self.shown else ""
        self.shown = max(self.shown, end)
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is the start of a stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's scheme, used by Qwen, Llama 3, ...) -> byte."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in kept:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_piece(tokenizer, token_id: int) -> tuple[str, bytes]:
    """(text, bytes) of one token on its own. A token holding part of a UTF-8 character (byte-level BPE splits
    emoji and rare characters) gets its real bytes, and the text OpenAI's API gives such a token: "bytes:\\xf0\\x9d"
    (its lone decoding is U+FFFD, which would make different tokens look the same)."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    if "\ufffd" not in text:
        return text, text.encode("utf-8")
    token = tokenizer.convert_ids_to_tokens(token_id) or ""
    alphabet = _byte_level_alphabet()
    fallback = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", token)  # SentencePiece's byte fallback
    if fallback:
        raw = bytes([int(fallback.group(1), 16)])
    elif token and all(c in alphabet for c in token):
        raw = bytes(alphabet[c] for c in token)
    else:  # a tokenizer of another kind: its decoding is all there is
        return text, text.encode("utf-8")
    try:
        return raw.decode("utf-8"), raw
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw

"""Fallback for models outside the registry: the tokenizer's own chat template.

The text is whatever the model's Jinja template renders. Trained spans come from rendering prefixes:
assistant turn i spans from the end of `render(messages[:i], add_generation_prompt=True)` to the end of
`render(messages[:i+1])`. That only works for prefix-stable templates (rendering more messages never
rewrites earlier text), which is checked for every turn of every conversation; a template that moves
text around (e.g. Mistral's system message in the last user turn) is refused with the turn named.
"""
from __future__ import annotations

from .base import Segments, TemplateSpec
from .errors import TemplateError


def jinja_spec(tokenizer, name: str) -> TemplateSpec:
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(f"{name!r} is not in the registry and its tokenizer has no chat_template; "
                            "name a template with --template (see `wb models`)")
    stops = tuple(t for t in (tokenizer.eos_token,) if t)
    return TemplateSpec(f"jinja:{name}", render_jinja, stops, {"tokenizer": tokenizer},
                        "the tokenizer's own chat template (prefix-rendered labels)")


def _render(tokenizer, messages, tools, add_generation_prompt, **kw) -> str:
    if not messages:
        return ""
    try:
        return tokenizer.apply_chat_template(list(messages), tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt, **kw)
    except Exception as e:  # jinja errors from raise_exception and friends
        raise TemplateError(f"the model's chat template rejected the conversation: {e}") from None


def render_jinja(spec: TemplateSpec, messages: list[dict], tools: list | None, add_generation_prompt: bool,
                 **kw) -> Segments:
    tok = spec.options["tokenizer"]
    full = _render(tok, messages, tools, add_generation_prompt, **kw)
    if add_generation_prompt:
        return [(full, False)]
    segs: Segments = []
    pos = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tok, messages[:i], tools, True, **kw)
        upto = _without_chat_end(tok, messages[:i + 1], tools, len(prompt), **kw)
        start = len(prompt)
        if not (full.startswith(upto) and upto.startswith(prompt)) or start < pos:
            raise TemplateError(f"the model's chat template is not prefix-stable at message {i} (assistant): "
                                "rendering the chat up to that turn gives text that the full chat does not start "
                                "with, so its trained span cannot be located; use a registered template with "
                                "--template")
        end = len(upto.rstrip("\n"))
        segs += [(full[pos:start], False), (full[start:end], m.get("loss") is not False)]
        pos = end
    segs.append((full[pos:], False))
    return [s for s in segs if s[0]]


def _without_chat_end(tok, messages: list[dict], tools, start: int, **kw) -> str:
    """The chat up to an assistant turn, without the eos some templates append only where a chat ends (Phi-3.5,
    InternLM2: `<|end|>\n<|endoftext|>`): it ends the chat, not the turn, and is not trained. Found by rendering a
    user turn after it: where the only difference is that eos, it goes."""
    upto = _render(tok, messages, tools, False, **kw)
    eos = getattr(tok, "eos_token", None)
    turn = upto[start:].rstrip("\n")
    if not eos or not turn.endswith(eos):
        return upto
    continued = _render(tok, [*messages, {"role": "user", "content": "."}], tools, False, **kw)[start:]
    if continued.startswith(turn) or not continued.startswith(turn[:-len(eos)]):
        return upto  # the eos ends the turn too (Qwen's <|im_end|>), or the continued chat differs earlier
    return upto[:start] + turn[:-len(eos)]

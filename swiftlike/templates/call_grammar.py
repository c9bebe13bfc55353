"""Grammars of each family's tool-call format, to force a call: OpenAI's `tool_choice: "required"` (one or more
calls of the offered tools) or a named function (one call of it). Constrained decoding (infer/grammar.py) then lets
the model write only such calls.

The grammars are llguidance's Lark dialect. Each mirrors what the format's parser (toolcalls.py) reads and the
family's template renders: the markers a tokenizer holds as single tokens (`<tool_call>`, `[TOOL_CALLS]`,
DeepSeek's `<｜tool▁call▁begin｜>`, ...) are written as those tokens, `<[id]>` (the model's trained way to write
them; spelled out in pieces its parser would read the same text), and the arguments are JSON of the function's
`parameters` schema with the separators json.dumps and the official templates use. A call names its function as
the format does: in the JSON object around the arguments (hermes, Llama 3, Mistral; that object is written out as
text, so the parameters stay a JSON document of their own and their `$ref`s resolve as written) or before them
(DeepSeek, GLM-4, Mistral-Small). tests/test_forced_tool_calls.py checks each grammar accepts what the family's
template renders for a turn of calls.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from .errors import TemplateError

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class CallSyntax:
    """One format: `call(name, arguments, mark)` is the grammar of one call of the function `name` whose arguments'
    grammar is `arguments`; calls follow each other joined by `between`, inside `opening` ... `closing` (markers'
    texts); `many`: whether a turn may hold several."""

    call: Callable
    between: tuple = ()
    opening: tuple = ()
    closing: tuple = ()
    many: bool = True


def _schema(schema: dict, style: dict = JSON_STYLE) -> str:
    """JSON of `schema`, a document of its own (its `$ref`s and `$defs` resolve as written), in `style` unless the
    schema sets its own llguidance options."""
    options = schema.get("x-guidance")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise TemplateError(f"a JSON schema's x-guidance must be an object of llguidance options, not "
                            f"{json.dumps(options)[:40]}")
    return "%json " + json.dumps({**schema, "x-guidance": {**style, **options}}, ensure_ascii=False)


def _text(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _named(key: str) -> Callable[[str], str]:
    """The JSON object around a call's arguments, `{"name": NAME, KEY: <arguments>}`, written out as the templates
    render it, so that the arguments stay a document of their own."""
    return lambda name: _text('{"name": ' + json.dumps(name, ensure_ascii=False) + f', "{key}": ')


MISTRAL_ID = "(" + _text(', "id": "') + " /[a-zA-Z0-9]{9}/ " + _text('"') + ")?"  # (Mistral's 9-character call ids)

SYNTAX = {
    "hermes": CallSyntax(lambda name, args, mark: " ".join(
        [mark("<tool_call>"), _text("\n"), _named("arguments")(name), args, _text("}\n"), mark("</tool_call>")]),
        between=("\n",)),
    "llama3_json": CallSyntax(lambda name, args, mark: " ".join([_named("parameters")(name), args, _text("}")]),
                              many=False),
    "mistral": CallSyntax(lambda name, args, mark: " ".join([_named("arguments")(name), args, MISTRAL_ID,
                                                             _text("}")]), between=(", ",)),
    "mistral_small": CallSyntax(lambda name, args, mark: " ".join(
        [mark("[TOOL_CALLS]"), _text(name), mark("[CALL_ID]"), "/[a-zA-Z0-9]{9}/", mark("[ARGS]"), args])),
    "deepseek": CallSyntax(lambda name, args, mark: " ".join(
        [mark("<｜tool▁call▁begin｜>"), _text("function"), mark("<｜tool▁sep｜>"),
         _text(name + "\n```json\n"), args, _text("\n```"), mark("<｜tool▁call▁end｜>")]),
        between=("\n",), opening=("<｜tool▁calls▁begin｜>",), closing=("<｜tool▁calls▁end｜>",)),
    "deepseek_v3_1": CallSyntax(lambda name, args, mark: " ".join(
        [mark("<｜tool▁call▁begin｜>"), _text(name), mark("<｜tool▁sep｜>"), args,
         mark("<｜tool▁call▁end｜>")]), opening=("<｜tool▁calls▁begin｜>",), closing=("<｜tool▁calls▁end｜>",)),
    "glm4": CallSyntax(lambda name, args, mark: " ".join([_text(name + "\n"), args]), between=("<|assistant|>",)),
}


def forced_call_grammar(template, tools: list[dict], choice: str | None, parallel: bool = True,
                        think: str | None = None) -> str:
    """The grammar of an answer that is only tool calls in `template`'s format: of the function named `choice`
    (one call), or of any offered tool (`choice` None: "required"; several unless `parallel` is false).
    `think`: what the prompt did with a think block (`prompt_think`); the calls follow the reasoning."""
    fmt = template.spec.options.get("tool_format")
    if fmt is None:
        raise TemplateError(f"the {template.name} template has no tool-call format: a tool call cannot be forced")
    functions = {t["function"]["name"]: t["function"].get("parameters") or {"type": "object"} for t in tools}
    spaced = [name for name in functions if not name or any(c.isspace() for c in name)]
    if spaced:
        raise TemplateError(f"the function name {json.dumps(spaced[0])} (empty or with white space) cannot be "
                            "forced: the tool-call formats end a name there")
    if choice is not None:
        functions = {choice: functions[choice]}
    syntax, mark = SYNTAX[fmt], _marker(template.tokenizer)
    opening, rules = _before_answer(template, mark, think)
    if fmt == "mistral":  # the calls are one JSON array after the marker: [call, call]
        sep = template.spec.options.get("sep", "")
        opening += [mark("[TOOL_CALLS]"), *([_text(sep)] if sep else []), _text("[")]
    closing = [_text("]")] if fmt == "mistral" else []
    rules += [f"call: {' | '.join(f'call{i}' for i in range(len(functions)))}"]
    rules += [f"call{i}: {syntax.call(name, _schema(params), mark)}"
              for i, (name, params) in enumerate(functions.items())]
    between = " ".join(mark(m) for m in syntax.between)
    calls = f"call ({between} call)*" if syntax.many and parallel and choice is None else "call"
    start = " ".join([*opening, *(mark(m) for m in syntax.opening), calls, *(mark(m) for m in syntax.closing),
                      *closing])
    return "\n".join([f"start: {start}", *rules]) + "\n"


def json_grammar(template, schema: str, think: str | None) -> str:
    """The grammar of an answer that is JSON of `schema` (compact, as infer/grammar.py writes it), after the
    reasoning `think` allows (`prompt_think`)."""
    opening, rules = _before_answer(template, _marker(template.tokenizer), think)
    start = " ".join(["start:", *opening, _schema(json.loads(schema), {"whitespace_flexible": False})])
    return "\n".join([start, *rules]) + "\n"


def needs_grammar(template, think: str | None) -> bool:
    """Whether a JSON answer of `template` after a prompt that did `think` needs json_grammar (reasoning may come
    first), or a plain JSON schema constrains the whole answer."""
    return think == "open" or think is None and bool(template.spec.options.get("hybrid_thinking"))


def prompt_think(tokenizer, prompt_ids: list[int]) -> str | None:
    """What the generation prompt did with a think block: "open" (it ends in `<think>`: the answer reasons, then
    closes it), "closed" (it ends in a closed one: Qwen3's `enable_thinking=False`; the answer is all answer), None
    (neither). A `<think>` in the user's own text, before the assistant header, is not one."""
    tail = tokenizer.decode(prompt_ids[-16:], skip_special_tokens=False).rstrip()
    return "open" if tail.endswith(THINK_OPEN) else "closed" if tail.endswith(THINK_CLOSE) else None


def _before_answer(template, mark, think: str | None) -> tuple[list[str], list[str]]:
    """What comes before a constrained answer, as grammar items and the rules they use: after a prompt that opened
    a think block, free reasoning and its close ("</think>" and what the template writes before an answer: a blank
    line, or nothing for DeepSeek-V3.1); for a hybrid-thinking template (Qwen3) whose prompt left thinking on, an
    optional think block of free reasoning (the model decides, as its template renders answers with and without
    one); else nothing."""
    if not needs_grammar(template, think):
        return [], []
    reasoning, rules = _reasoning(mark)
    after = _after_close(template)
    close = [*reasoning, *([_text(after)] if after else [])]
    if think == "open":
        return close, rules
    return [f"({mark(THINK_OPEN)} {' '.join(close)})?"], rules


def _after_close(template) -> str:
    """What the template writes between a think block's close and the answer: a blank line (Qwen3, QwQ,
    DeepSeek-R1-Distill), nothing (DeepSeek-V3.1), read from its rendering of a turn with reasoning."""
    reasoning, answer = "REASONING_7f3", "ANSWER_7f3"
    turn = [{"role": "user", "content": "Q"},
            {"role": "assistant", "content": answer, "reasoning_content": reasoning}]
    try:
        text = template.render_text(turn, None, False, thinking=True)
    except (TemplateError, KeyError, TypeError, ValueError):  # (a template that cannot hold such a turn)
        return "\n\n"
    close = text.find(THINK_CLOSE, max(text.find(reasoning), 0))  # (the close of this turn's reasoning)
    end = text.find(answer, close)
    return text[close + len(THINK_CLOSE):end] if text.find(reasoning) >= 0 and 0 <= close < end else "\n\n"


def _reasoning(mark) -> tuple[list[str], list[str]]:
    """Free text up to and including the think block's close (items and rules): any text, then the `</think>`
    token where the tokenizer holds one (the lexer cannot read a special token inside text); else the shortest text
    that ends in "</think>"."""
    close = mark(THINK_CLOSE)
    if close.startswith("<["):
        return ["/(?s:.*)/", close], []
    return ["reasoning"], ["reasoning[lazy]: /(?s:.*)<\\/think>/"]


def _marker(tokenizer) -> Callable[[str], str]:
    """A marker's grammar: its token `<[id]>` where the tokenizer holds it as one added token, else its text."""
    added = tokenizer.get_added_vocab() if tokenizer is not None else {}

    def mark(text: str) -> str:
        return f"<[{added[text]}]>" if text in added else _text(text)

    return mark

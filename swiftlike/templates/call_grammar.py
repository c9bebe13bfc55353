"""Grammars of each family's tool-call format, to force a call: OpenAI's `tool_choice: "required"` (one or more
calls of the offered tools) or a named function (one call of it). Constrained decoding (infer/grammar.py) then lets
the model write only such calls.

The grammars are llguidance's Lark dialect. Each mirrors what the format's parser (toolcalls.py) reads and the
family's template renders: the markers a tokenizer holds as single tokens (`<tool_call>`, `[TOOL_CALLS]`,
DeepSeek's `<｜tool▁call▁begin｜>`, ...) are written as those tokens, `<[id]>` (the model's trained way to write
them; spelled out in pieces its parser would read the same text), and the arguments are JSON of the function's
`parameters` schema with the separators json.dumps and the official templates use. A call names its function as
the format does: inside the JSON object (hermes, Llama 3, Mistral) or before the arguments (DeepSeek, GLM-4,
Mistral-Small).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from .errors import TemplateError

JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class CallSyntax:
    """One format: `call(name, parameters, mark)` is the grammar of one call of that function; calls follow each
    other joined by `between`, inside `opening` ... `closing` (markers' texts); `many`: whether a turn may hold
    several. `array`: the calls are one JSON array (Mistral), built by `array_call` instead."""

    call: Callable | None = None
    between: tuple = ()
    opening: tuple = ()
    closing: tuple = ()
    many: bool = True
    array: bool = False


def _schema(schema: dict) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": JSON_STYLE}, ensure_ascii=False)


def _object(name: str, key: str, parameters: dict, extra: dict | None = None, defs: dict | None = None) -> dict:
    """{"name": name, key: arguments}: the JSON object a call is in hermes, Llama 3 and Mistral. The parameters'
    definitions go to `defs` (the document's root; by default this object's own)."""
    own = {} if defs is None else defs
    args = _lift(parameters, f"{name}.", own)
    out = {"type": "object", "properties": {"name": {"const": name}, key: args, **(extra or {})},
           "required": ["name", key], "additionalProperties": False}
    return {**out, "$defs": own} if defs is None and own else out


def _lift(schema: dict, prefix: str, defs: dict) -> dict:
    """`schema` nested in another document: its definitions move to that document's `defs` (named with `prefix`),
    and its references, which point from its own root ("#", "#/$defs/X", "#/definitions/X", as pydantic and the
    openai client write them), are rewritten to match."""
    def rewrite(node, root=False):
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: rewrite(v) for k, v in node.items() if not (root and k in ("$defs", "definitions"))}
        ref = node.get("$ref")
        if ref == "#":
            out["$ref"] = f"#/$defs/{prefix}"
        elif isinstance(ref, str):
            for base in ("#/$defs/", "#/definitions/"):
                if ref.startswith(base):
                    out["$ref"] = f"#/$defs/{prefix}{ref[len(base):]}"
        return out

    for section in ("definitions", "$defs"):
        for name, definition in (schema.get(section) or {}).items():
            defs[prefix + name] = rewrite(definition)
    lifted = rewrite(schema, root=True)
    if '"$ref": "#"' in json.dumps(schema):  # (a recursive schema refers to its root)
        defs[prefix] = lifted
    return lifted


def _text(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


MISTRAL_ID = {"id": {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"}}  # (Mistral's 9-character call ids)

SYNTAX = {
    "hermes": CallSyntax(lambda name, params, mark: " ".join(
        [mark("<tool_call>"), _text("\n"), _schema(_object(name, "arguments", params)), _text("\n"),
         mark("</tool_call>")]), between=("\n",)),
    "llama3_json": CallSyntax(lambda name, params, mark: _schema(_object(name, "parameters", params)), many=False),
    "mistral": CallSyntax(array=True),
    "mistral_small": CallSyntax(lambda name, params, mark: " ".join(
        [mark("[TOOL_CALLS]"), _text(name), mark("[CALL_ID]"), "/[a-zA-Z0-9]{9}/", mark("[ARGS]"),
         _schema(params)])),
    "deepseek": CallSyntax(lambda name, params, mark: " ".join(
        [mark("<｜tool▁call▁begin｜>"), _text("function"), mark("<｜tool▁sep｜>"),
         _text(name + "\n```json\n"), _schema(params), _text("\n```"), mark("<｜tool▁call▁end｜>")]),
        between=("\n",), opening=("<｜tool▁calls▁begin｜>",), closing=("<｜tool▁calls▁end｜>",)),
    "deepseek_v3_1": CallSyntax(lambda name, params, mark: " ".join(
        [mark("<｜tool▁call▁begin｜>"), _text(name), mark("<｜tool▁sep｜>"), _schema(params),
         mark("<｜tool▁call▁end｜>")]),
        opening=("<｜tool▁calls▁begin｜>",), closing=("<｜tool▁calls▁end｜>",)),
    "glm4": CallSyntax(lambda name, params, mark: " ".join([_text(name + "\n"), _schema(params)]),
                       between=("<|assistant|>",)),
}


def forced_call_grammar(template, tools: list[dict], choice: str | None, parallel: bool = True,
                        in_think: bool = False) -> str:
    """The grammar of an answer that is only tool calls in `template`'s format: of the function named `choice`
    (one call), or of any offered tool (`choice` None: "required"; several unless `parallel` is false).
    `in_think`: the prompt opened a think block, which the answer closes first (with nothing in it)."""
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
    opening = _think_closed(mark) if in_think else []
    many = syntax.many and parallel and choice is None
    if syntax.array:
        sep, defs = template.spec.options.get("sep", ""), {}
        items = {"anyOf": [_object(n, "arguments", p, MISTRAL_ID, defs) for n, p in functions.items()]}
        array = {"type": "array", "items": items, "minItems": 1, **({} if many else {"maxItems": 1}),
                 **({"$defs": defs} if defs else {})}
        return " ".join(["start:", *opening, mark("[TOOL_CALLS]"), *([_text(sep)] if sep else []),
                         _schema(array)]) + "\n"
    rules = [f"call: {' | '.join(f'call{i}' for i in range(len(functions)))}"]
    rules += [f"call{i}: {syntax.call(name, params, mark)}" for i, (name, params) in enumerate(functions.items())]
    between = " ".join(mark(m) for m in syntax.between)
    calls = f"call ({between} call)*" if many else "call"
    start = " ".join([*opening, *(mark(m) for m in syntax.opening), calls, *(mark(m) for m in syntax.closing)])
    return "\n".join([f"start: {start}", *rules]) + "\n"


def json_grammar(template, schema: str, in_think: bool) -> str:
    """The grammar of an answer that is JSON of `schema` (compact, as infer/grammar.py writes it); `in_think`: after
    closing the think block the prompt opened."""
    parsed = {**json.loads(schema), "x-guidance": {"whitespace_flexible": False}}
    opening = _think_closed(_marker(template.tokenizer)) if in_think else []
    return " ".join(["start:", *opening, "%json", json.dumps(parsed, ensure_ascii=False)]) + "\n"


def _think_closed(mark) -> list[str]:
    """An empty rest of a think block the prompt opened: the answer proper starts after it, as the thinking
    templates render an answer (reasoning, "</think>", a blank line)."""
    return [mark("</think>"), _text("\n\n")]


def _marker(tokenizer) -> Callable[[str], str]:
    """A marker's grammar: its token `<[id]>` where the tokenizer holds it as one added token, else its text."""
    added = tokenizer.get_added_vocab() if tokenizer is not None else {}

    def mark(text: str) -> str:
        return f"<[{added[text]}]>" if text in added else _text(text)

    return mark

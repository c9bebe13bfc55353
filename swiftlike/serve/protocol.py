"""OpenAI request bodies -> what the engine needs, and engine output -> OpenAI response objects.

Parsing is by hand rather than by schema so that every refusal names the offending field (`param`) in the
error body, and unknown fields are ignored as the OpenAI API ignores them (clients send `user`, `store`, ...).
"""
from __future__ import annotations

import codecs
import json
import math
import secrets
from dataclasses import dataclass, field

from ..infer.params import ANY_JSON_OBJECT
from .errors import ApiError

MAX_N = 64              # choices per request: a bound on what one request may ask of the batch
MAX_TOP_LOGPROBS = 20   # as OpenAI
UNSUPPORTED = {"suffix": None, "echo": False}  # fields whose non-default values we cannot honour: refused


@dataclass
class GenerationRequest:
    """What /v1/chat/completions and /v1/completions have in common."""

    model: str
    sampling: dict                   # SamplingParams keywords except max_new_tokens
    max_tokens: int | None           # None: as many as the context (and --max_tokens_limit) allow
    stream: bool = False
    include_usage: bool = False


@dataclass
class ChatRequest(GenerationRequest):
    messages: list = field(default_factory=list)
    tools: list | None = None        # rendered into the prompt and parsed out of the answer
    template_kwargs: dict = field(default_factory=dict)
    force_call: bool = False         # tool_choice "required" or a named function: the answer is only tool calls
    function: str | None = None      # the named function, when one is
    parallel_tool_calls: bool = True


@dataclass
class CompletionRequest(GenerationRequest):
    prompts: list = field(default_factory=list)   # each a string or a list of token ids


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    except (ValueError, RecursionError) as e:  # integers of thousands of digits, nesting deeper than Python's stack
        raise ApiError(400, f"the request body cannot be read ({type(e).__name__}: {str(e)[:120]})",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}",
                       code="invalid_json")
    return body


def _get(body: dict, key: str, kinds: tuple, what: str, default=None):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ApiError(400, f"'{key}' must be {what}, got {json.dumps(value)[:80]}", param=key)
    return value


def _number(body, key, default, lo=None, hi=None, lo_open=False, integer=False):
    value = _get(body, key, (int,) if integer else (int, float), "an integer" if integer else "a number", default)
    if value is None:
        return None
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise ApiError(400, f"'{key}' must be a finite number, got {str(value)[:40]}", param=key)
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    if low_bad or hi is not None and value > hi:
        bounds = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ApiError(400, f"'{key}' must be in {bounds}, got {value}", param=key)
    return value


def _logit_bias(body: dict) -> tuple:
    """{"token id": bias in [-100, 100]} -> ((id, bias), ...)."""
    bias = _get(body, "logit_bias", (dict,), "an object mapping token ids to numbers", {})
    out = {}
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isdecimal() and len(key) <= 12) or isinstance(value, bool) or \
                not isinstance(value, (int, float)) or not -100 <= value <= 100 or int(key) in out:
            raise ApiError(400, f"'logit_bias' maps token ids, each once, to numbers in [-100, 100], got "
                                f"{json.dumps({key: value})[:80]}", param="logit_bias")
        out[int(key)] = float(value)
    return tuple(out.items())


def _common(body: dict, chat: bool) -> tuple[str, dict, int | None, bool, bool]:
    model = _get(body, "model", (str,), "a string")
    if not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    for key, default in UNSUPPORTED.items():
        if body.get(key) not in (None, default):
            raise ApiError(400, f"'{key}' is not supported by this server", param=key, code="unsupported")
    max_tokens = _number(body, "max_tokens", None, lo=1, integer=True)
    if chat:
        max_tokens = _number(body, "max_completion_tokens", max_tokens, lo=1, integer=True)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, "'stop' must be a non-empty string or a list of them", param="stop")
    top_k = _number(body, "top_k", 0, lo=-1, integer=True)     # vLLM's extension; -1 and 0 mean no limit
    sampling = {
        "temperature": float(_number(body, "temperature", 1.0, lo=0)),
        "top_p": float(_number(body, "top_p", 1.0, lo=0, hi=1, lo_open=True)),
        "top_k": max(top_k, 0),
        "repetition_penalty": float(_number(body, "repetition_penalty", 1.0, lo=0, lo_open=True)),
        "presence_penalty": float(_number(body, "presence_penalty", 0.0, lo=-2, hi=2)),
        "frequency_penalty": float(_number(body, "frequency_penalty", 0.0, lo=-2, hi=2)),
        "logit_bias": _logit_bias(body),
        "stop": tuple(stop or ()),
        "seed": _number(body, "seed", None, lo=0, hi=2 ** 63 - 1 - MAX_N, integer=True),  # per-choice seeds follow
        "n": _number(body, "n", 1, lo=1, hi=MAX_N, integer=True),
    }
    if chat:
        wanted = _get(body, "logprobs", (bool,), "true or false", False)
        top = _number(body, "top_logprobs", 0, lo=0, hi=MAX_TOP_LOGPROBS, integer=True)
        if top and not wanted:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    else:  # the completions API: logprobs is the number of alternatives per token
        top = _number(body, "logprobs", None, lo=0, hi=5, integer=True)
        wanted, top = top is not None, top or 0
    sampling.update(logprobs=wanted, top_logprobs=top)
    stream = _get(body, "stream", (bool,), "true or false", False)
    options = _get(body, "stream_options", (dict,), "an object", {})
    include_usage = bool(stream and _get(options, "include_usage", (bool,), "true or false", False))
    return model, sampling, max_tokens, stream, include_usage


def parse_chat_request(body: dict) -> ChatRequest:
    model, sampling, max_tokens, stream, include_usage = _common(body, chat=True)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of messages", param="messages",
                       code="invalid_messages")
    # OpenAI's newer name for the system role; templates know the system role
    messages = [{**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m
                for m in messages]
    tools = _get(body, "tools", (list,), "a list", None)
    names = set()
    for i, tool in enumerate(tools or []):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or tool.get("type") != "function":
            raise ApiError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                           param="tools")
        if not isinstance(fn.get("parameters", {}), (dict, type(None))):
            raise ApiError(400, f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
        if fn["name"] in names:
            raise ApiError(400, f"tools[{i}]: another tool is already named {json.dumps(fn['name'])[:80]}",
                           param="tools")
        names.add(fn["name"])
    choice = "auto" if body.get("tool_choice") is None else body["tool_choice"]  # ({}, false, "": refused)
    if choice == "none":
        tools = None                 # not offered to the model, so nothing is parsed as a call either
    force, function = _forced_call(choice, tools)
    sampling["json_schema"] = _json_schema(body)
    if force and sampling["json_schema"] is not None:
        raise ApiError(400, "a forced tool call (tool_choice) and a JSON response_format cannot be combined: the "
                            "answer is either tool calls or JSON", param="tool_choice")
    kwargs = _get(body, "chat_template_kwargs", (dict,), "an object", {})
    return ChatRequest(model=model, sampling=sampling, max_tokens=max_tokens, stream=stream,
                       include_usage=include_usage, messages=messages, tools=tools or None, template_kwargs=kwargs,
                       force_call=force, function=function,
                       parallel_tool_calls=_get(body, "parallel_tool_calls", (bool,), "true or false", True))


def _forced_call(choice, tools: list | None) -> tuple[bool, str | None]:
    """tool_choice -> (whether the answer must be tool calls, the function it must call, if one is named)."""
    if choice in ("auto", "none"):
        return False, None
    function = None
    if isinstance(choice, dict):
        fn = choice.get("function")
        function = fn.get("name") if isinstance(fn, dict) and choice.get("type") == "function" else None
        function = function if isinstance(function, str) else ""  # ("": refused below)
    if choice != "required" and not function:
        raise ApiError(400, "'tool_choice' may be \"auto\", \"none\", \"required\" or {\"type\": \"function\", "
                            "\"function\": {\"name\": ...}}", param="tool_choice")
    if not tools:
        raise ApiError(400, "'tool_choice' asks for a tool call, but the request offers no tools", param="tool_choice")
    if function and function not in {t["function"]["name"] for t in tools}:
        raise ApiError(400, f"'tool_choice' names the function {json.dumps(function)[:80]}, which is not among the "
                            "tools", param="tool_choice")
    return True, function


def _json_schema(body: dict) -> str | None:
    """`response_format` -> the JSON schema the answer is constrained to (infer/grammar.py), None for free text:
    json_object is any JSON object, json_schema its `schema` (any JSON value without one, as OpenAI allows)."""
    fmt = _get(body, "response_format", (dict,), "an object", {"type": "text"})
    kind = fmt.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return ANY_JSON_OBJECT
    spec = fmt.get("json_schema")
    if kind != "json_schema":
        raise ApiError(400, f"response_format type {json.dumps(kind)[:40]} is not one of \"text\", \"json_object\", "
                            "\"json_schema\"", param="response_format")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or \
            not isinstance(spec.get("schema", {}), dict):
        raise ApiError(400, "response_format json_schema must be {\"type\": \"json_schema\", \"json_schema\": "
                            "{\"name\": ..., \"schema\": {...}}}", param="response_format")
    return json.dumps(spec.get("schema", {}))


MAX_COMPLETIONS_PER_REQUEST = 256


def parse_completion_request(body: dict) -> CompletionRequest:
    model, sampling, max_tokens, stream, include_usage = _common(body, chat=False)
    prompt = body.get("prompt")
    if isinstance(prompt, str) or _token_ids(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _token_ids(p) for p in prompt):
        prompts = prompt
    else:
        raise ApiError(400, "'prompt' must be a string, a list of strings, a list of token ids, or a list of "
                            "those", param="prompt")
    if len(prompts) * sampling["n"] > MAX_COMPLETIONS_PER_REQUEST:  # one request must not flood the engine
        raise ApiError(400, f"one request may ask for at most {MAX_COMPLETIONS_PER_REQUEST} completions (prompts x n), "
                            f"got {len(prompts)} x {sampling['n']}", param="prompt")
    return CompletionRequest(model=model, sampling=sampling, max_tokens=max_tokens, stream=stream,
                             include_usage=include_usage, prompts=prompts)


def _token_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                          for t in value)


# -- responses -------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def openai_tool_calls(calls: list[dict]) -> list[dict]:
    """Parsed calls (arguments as objects) -> OpenAI's (arguments as a JSON string, an id each)."""
    out = []
    for call in calls:
        fn = call["function"]
        args = fn.get("arguments")
        out.append({"id": call.get("id") or new_id("call"), "type": "function",
                    "function": {"name": fn["name"],
                                 "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}})
    return out


def chat_message(parsed: dict) -> dict:
    """A parsed assistant message -> the `message` of a chat completion choice."""
    calls = parsed.get("tool_calls")
    out = {"role": "assistant", "content": parsed["content"] if parsed["content"] or not calls else None}
    if parsed.get("reasoning"):
        out["reasoning_content"] = parsed["reasoning"]
    if calls:
        out["tool_calls"] = openai_tool_calls(calls)
    return out


def _logprob(entry: dict) -> float:
    """A finite log-probability (JSON has no NaN or -inf): OpenAI's -9999.0 for one a backend could not give."""
    value = entry["logprob"]
    return value if math.isfinite(value) else -9999.0


def _bytes(entry: dict) -> list[int]:
    """The token's own bytes (the engine's, exact for a piece of a character), else its text's."""
    return entry["bytes"] if "bytes" in entry else list(entry["token"].encode("utf-8", errors="replace"))


def chat_logprobs(entries: list[dict] | None) -> dict | None:
    """Engine per-token log-probs -> a chat choice's `logprobs`."""
    if entries is None:
        return None
    return {"content": [{"token": e["token"], "logprob": _logprob(e), "bytes": _bytes(e),
                         "top_logprobs": [{"token": t["token"], "logprob": _logprob(t), "bytes": _bytes(t)}
                                          for t in e.get("top") or []]} for e in entries]}


def completion_logprobs(entries: list[dict] | None, offset: int = 0) -> dict | None:
    """Engine per-token log-probs -> a (legacy) completion choice's `logprobs`; offsets count from `offset`."""
    if entries is None:
        return None
    offsets, chars = [], offset
    decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
    for e in entries:  # in characters: a token that ends inside a character is counted with its last byte
        offsets.append(chars)
        chars += len(decoder.decode(bytes(_bytes(e))))
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [_logprob(e) for e in entries],
            "top_logprobs": [{t["token"]: _logprob(t) for t in e.get("top") or []} for e in entries],
            "text_offset": offsets}

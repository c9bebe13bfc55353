"""One normalisation of a chat message, shared by the data layer and the templates' public methods.

A message is {role, content, reasoning?, tool_calls?, tool_call_id?, images?, videos?, loss?}. Accepted on input:
- content as a string, or as a list of typed parts: text (`text` or `value`, the OpenAI and LLaMA-Factory v1
  spellings), reasoning / thinking (into `reasoning`), tool_call (a JSON string or object, into `tool_calls`),
  image (`{"type": "image", "image": SRC}`, Qwen's form; `{"type": "image_url", "image_url": {"url": SRC}}`,
  OpenAI's; `input_image`): the image becomes an IMAGE marker in the text and its source is appended to `images`
  (a vision-language template renders the marker as the model's image tokens; a text-only one refuses it);
  video (`{"type": "video", "video": SRC or [frame SRC, ...]}`, Qwen's form; `{"type": "video_url", "video_url":
  {"url": SRC}}`; `input_video`): a VIDEO marker and an entry in `videos`, likewise;
- `reasoning` or `reasoning_content` (the key the official Qwen3 chat template reads);
- `loss` (true / false), or `loss_weight` / `weight` (1 / 0: LLaMA-Factory v1, OpenAI fine-tuning files).
Audio and file parts and unknown part types or keys are refused, never read as "".
"""
from __future__ import annotations

import json

from .errors import TemplateError

ROLES = ("system", "user", "assistant", "tool")
IMAGE = "<image>"  # where an image stands in a message's text (also the ms-swift / LLaMA-Factory placeholder)
IMAGE_PARTS = ("image", "image_url", "input_image")
VIDEO = "<video>"  # where a video stands in a message's text (the ms-swift / LLaMA-Factory placeholder)
VIDEO_PARTS = ("video", "video_url", "input_video")
MEDIA_PARTS = ("audio", "input_audio", "audio_url", "file")
_REASONING_PARTS = ("reasoning", "thinking")
# Keys some exporters add that change nothing a template renders (OpenAI's name/refusal/annotations, ids).
_IGNORED_KEYS = ("name", "id", "refusal", "annotations")
_KEYS = ("role", "content", "reasoning", "reasoning_content", "tool_calls", "tool_call_id", "images", "videos", "loss",
         "loss_weight", "weight") + _IGNORED_KEYS
# Keys the openai client's message.model_dump() carries as null when a reply has no audio or legacy function call.
_NULL_KEYS = ("audio", "function_call")


class MessageError(TemplateError):
    """A message that cannot be read as given (the data layer adds file and row)."""


def normalize_messages(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)):
        raise MessageError(f"messages must be a list, got {type(messages).__name__}")
    return [normalize_message(m, i) for i, m in enumerate(messages)]


def normalize_message(m, i: int = 0) -> dict:
    """The canonical form of message `i` (idempotent: a canonical message comes back equal)."""
    if not isinstance(m, dict):
        raise MessageError(f"message {i} must be an object, got {type(m).__name__}")
    role = m.get("role")
    if role not in ROLES:
        raise MessageError(f"message {i} has unknown role {role!r} (expected one of {', '.join(ROLES)})")
    unknown = [k for k in m if k not in _KEYS and not (k in _NULL_KEYS and m[k] is None)]
    if unknown:
        raise MessageError(f"message {i} has unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    text, part_reasoning, part_calls, part_images, part_videos = message_content(m.get("content"), i)
    calls = m.get("tool_calls") or None
    if calls is not None and part_calls:
        raise MessageError(f"message {i} has tool calls both in 'tool_calls' and in its content parts")
    if calls is not None and not isinstance(calls, list):
        raise MessageError(f"message {i}: tool_calls must be a list, got {type(calls).__name__}")
    calls = [tool_call(c, i) for c in calls] if calls is not None else part_calls
    if text is None and not calls:
        raise MessageError(f"message {i} has no content")
    out = {"role": role, "content": text or ""}
    reasoning = m["reasoning"] if m.get("reasoning") is not None else m.get("reasoning_content")
    if reasoning is not None and part_reasoning is not None:
        raise MessageError(f"message {i} has reasoning both as a key and as content parts")
    if reasoning is not None:
        if not isinstance(reasoning, str):
            raise MessageError(f"message {i} reasoning must be a string, got {type(reasoning).__name__}")
        out["reasoning"] = reasoning
    elif part_reasoning is not None:
        out["reasoning"] = part_reasoning
    if calls:
        if role != "assistant":
            raise MessageError(f"message {i}: tool calls belong to an assistant message, not {role}")
        out["tool_calls"] = calls
    if role == "tool" and m.get("tool_call_id") is not None:
        out["tool_call_id"] = str(m["tool_call_id"])
    for key, marker, given, valid, kinds in (
            ("images", IMAGE, part_images, lambda s: isinstance(s, str), "paths, URLs or data URIs"),
            ("videos", VIDEO, part_videos, is_video_source, "paths, URLs, data URIs or lists of frames")):
        media = _media(m, out["content"], i, key, marker, given, valid, kinds)
        if media:
            out[key] = media
    loss = _loss(m, i)
    if loss is not None:
        out["loss"] = loss
    return out


def _media(m: dict, text: str, i: int, key: str, marker: str, from_parts: list, valid, kinds: str) -> list:
    """A message's images (videos): from its content parts or its `images` (`videos`) key, one per placeholder."""
    listed = m.get(key)
    if listed is not None and from_parts:
        raise MessageError(f"message {i} has {key} both in '{key}' and in its content parts")
    media = from_parts or listed
    if not media:
        return []
    if not isinstance(media, list) or not all(valid(s) for s in media):
        raise MessageError(f"message {i}: {key} must be a list of {kinds}")
    if m["role"] not in ("user", "tool"):
        raise MessageError(f"message {i}: {key} belong to user or tool messages, not {m['role']}")
    if text.count(marker) != len(media):
        raise MessageError(f"message {i} has {len(media)} {key[:-1]}(s) but {text.count(marker)} {marker} "
                           "placeholder(s) in its text")
    return list(media)


def is_video_source(value) -> bool:
    """A video file's path, URL or data URI, or a non-empty list of its frames' image sources."""
    if isinstance(value, list):
        return bool(value) and all(isinstance(s, str) and s for s in value)
    return isinstance(value, str) and bool(value)


def message_content(value, i: int) -> tuple[str | None, str | None, list, list, list]:
    """(text, reasoning or None, tool calls, image sources, video sources) of a message's content."""
    if value is None or isinstance(value, str):
        return value, None, [], [], []
    if not isinstance(value, list):
        raise MessageError(f"message {i} content must be a string or a list of parts, got {type(value).__name__}")
    texts, reasoning, calls, images, videos = [], [], [], [], []
    for j, part in enumerate(value):
        where = f"message {i} part {j}"
        if isinstance(part, str):  # a bare string part (some exporters)
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise MessageError(f"{where} must be an object, got {type(part).__name__}")
        kind = part.get("type", "text" if "text" in part else None)
        if kind == "text":
            texts.append(_part_text(part, where, "text"))
        elif kind in _REASONING_PARTS:
            reasoning.append(_part_text(part, where, kind))
        elif kind == "tool_call":
            calls.append(tool_call(_part_call(part, where), i))
        elif kind in IMAGE_PARTS:
            texts.append(IMAGE)
            images.append(_image_source(part, kind, where))
        elif kind in VIDEO_PARTS:
            texts.append(VIDEO)
            videos.append(_video_source(part, kind, where))
        elif kind in MEDIA_PARTS:
            raise MessageError(f"{where} is {kind!r} content: audio and file parts are not supported yet "
                               "(text, image and video parts are)")
        else:
            raise MessageError(f"{where} has unknown type {kind!r} (expected text, image, video, reasoning or "
                               "tool_call)")
    return "".join(texts), ("".join(reasoning) if reasoning else None), calls, images, videos


def _image_source(part: dict, kind: str, where: str) -> str:
    """A path, URL or data URI from an image part: Qwen's {"image": SRC}, OpenAI's {"image_url": {"url": SRC}}
    (or a bare string there), {"input_image": ...} / {"image_url": ...} likewise."""
    for key in (kind, "image", "image_url", "url"):
        value = part.get(key)
        if isinstance(value, dict):
            value = value.get("url")
        if isinstance(value, str) and value:
            return value
    raise MessageError(f"{where}: an {kind} part needs its source (a path, URL or data URI) under {kind!r}")


def _video_source(part: dict, kind: str, where: str):
    """A video file's source, or a list of frame sources, from a video part: Qwen's {"video": SRC or [...]},
    {"video_url": {"url": SRC}} (vLLM's), {"input_video": ...}."""
    for key in (kind, "video", "video_url", "url"):
        value = part.get(key)
        if isinstance(value, dict):
            value = value.get("url")
        if is_video_source(value):
            return list(value) if isinstance(value, list) else value
    raise MessageError(f"{where}: a {kind} part needs its source (a path, URL, data URI or a list of frames) "
                       f"under {kind!r}")


def _part_text(part: dict, where: str, kind: str) -> str:
    for key in (kind, "text", "value"):
        if isinstance(part.get(key), str):
            return part[key]
    raise MessageError(f"{where}: a {kind} part needs its text as a string under 'text' or 'value'")


def _part_call(part: dict, where: str) -> dict:
    value = part.get("value", part.get("tool_call", part.get("function")))
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise MessageError(f"{where}: tool_call value is not JSON") from None
    if not isinstance(value, dict):
        raise MessageError(f"{where}: a tool_call part needs a JSON object with name and arguments")
    return value


def tool_call(call, i: int) -> dict:
    """An OpenAI-style call {type: function, function: {name, arguments}, id?}; arguments as given (an object, or
    the JSON string of one: the templates whose official Jinja prints a string verbatim print it so; the others
    read `parsed_arguments`)."""
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise MessageError(f"message {i}: each tool call needs a function name")
    out = {"type": "function", "function": {"name": fn["name"], "arguments": fn.get("arguments", {})}}
    if isinstance(call, dict) and call.get("id") is not None:
        out["id"] = str(call["id"])
    return out


def misplaced_media(messages: list[dict], marker: str, key: str, count: int) -> str | None:
    """What is wrong with where a conversation's `marker` placeholders stand for `count` images (videos), or
    None: they belong to user and tool messages, one per image."""
    placed = sum(m["content"].count(marker) for m in messages if m["role"] in ("user", "tool"))
    stray = next((i for i, m in enumerate(messages) if m["role"] not in ("user", "tool") and marker in m["content"]),
                 None)
    if stray is not None and (count or placed):
        return f"message {stray} ({messages[stray]['role']}) holds a {marker} placeholder; {key} belong to user or " \
               "tool messages"
    if placed != count:
        return f"{placed} {marker} placeholder(s) in the messages but {count} {key[:-1]}(s)"
    return None


def parsed_arguments(fn: dict):
    """A call's arguments as an object, parsed where given as a JSON string (kept as the string where it is not
    JSON)."""
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            return json.loads(args)
        except json.JSONDecodeError:
            return args
    return args


def _loss(m: dict, i: int) -> bool | None:
    """True / False when the message says whether it is trained; None: the template's default."""
    if m.get("loss") is not None:
        if not isinstance(m["loss"], bool):
            raise MessageError(f"message {i}: loss must be true or false")
        return m["loss"]
    for key in ("loss_weight", "weight"):
        weight = m.get(key)
        if weight is None:
            continue
        if isinstance(weight, bool) or weight not in (0, 1):
            raise MessageError(f"message {i}: {key} must be 0 or 1 (got {weight!r}); fractional loss weights are "
                               "not supported")
        return weight == 1
    return None

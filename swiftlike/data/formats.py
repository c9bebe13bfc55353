"""Detect a row's format and turn it into the canonical row: {"messages": [...], "tools": [...]}.

Formats: OpenAI messages, ShareGPT (conversations with from/value), alpaca
(instruction/input/output/system/history), query/response(/history/system) and prompt/completion
(strings, or message lists as in TRL's conversational prompt-completion). A row that fits none names
the fields it has.
"""
from __future__ import annotations

import base64
import json

from ..templates.messages import (IMAGE, VIDEO, MessageError, is_video_source, message_content, misplaced_media,
                                  normalize_message, tool_call)

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "observation": "tool", "tool": "tool", "function_call": "assistant"}


class RowError(ValueError):
    """A problem with one row; the caller adds file and line."""


class UselessRow(RowError):
    """A well-formed row that cannot teach anything (e.g. chosen equals rejected): always counted and skipped."""


def detect_format(row: dict) -> str:
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "query" in row and "response" in row:
        return "query_response"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "question" in row and "choices" in row and "answer" in row:
        return "multiple_choice"
    if "question" in row and "answer" in row:
        return "question_answer"
    raise RowError(f"unknown format (fields: {', '.join(sorted(row)) or 'none'}); expected messages, "
                   "conversations (ShareGPT), instruction/output (alpaca), query/response, prompt/completion, "
                   "question/choices/answer (MMLU) or question/answer (GSM8K)")


TASKS = ("sft", "pt", "preference", "kto", "grpo", "prompt")


def to_canonical(row: dict, task: str = "sft") -> dict:
    """The canonical row for a task: sft {messages, tools?}; preference {messages, rejected_messages};
    kto {messages, label}; grpo {messages (the prompt), **extra columns}; prompt: grpo's, with videos (inference)."""
    if task in ("preference", "kto", "grpo", "prompt"):
        out = {"preference": _preference, "kto": _kto, "grpo": _grpo, "prompt": _grpo}[task](row)
        if task != "prompt":
            out = _no_videos(row, out, task)
        if task == "preference":
            return _pair_images(row, out)
        if task in ("grpo", "prompt"):  # the prompt's images (GRPO's reward functions receive the `images` column)
            out.pop("images", None)
            out.pop("videos", None)
            media = {"images": _images(row, out["messages"]), "videos": _videos(row, out["messages"])}
            return {**out, **{k: v for k, v in media.items() if v}}
        return out
    if task == "pt":
        if "text" not in row:
            raise RowError(f"pretraining rows need a 'text' field (fields: {', '.join(sorted(row)) or 'none'})")
        text = _text(row["text"], "text")
        if not text.strip():
            raise RowError("'text' is empty")
        return {"text": text}
    fmt = detect_format(row)
    if fmt == "messages":
        messages = [_message(m, i) for i, m in enumerate(_as_list(row["messages"], "messages"))]
    elif fmt == "sharegpt":
        messages = _sharegpt(row)
    elif fmt == "alpaca":
        messages = _alpaca(row)
    elif fmt == "query_response":
        messages = _turns(row, _text(row["query"], "query"), _text(row["response"], "response"))
    elif fmt == "multiple_choice":
        messages = _turns(row, *multiple_choice(row))
    elif fmt == "question_answer":
        messages = _turns(row, _text(row["question"], "question"), _text(row["answer"], "answer"))
    else:
        messages = _prompt_completion(row)
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("no assistant turn to train on")
    out = {"messages": messages}
    images, videos = _images(row, messages), _videos(row, messages)
    if images:
        out["images"] = images
    if videos:
        out["videos"] = videos
    tools = _tools(row.get("tools"))
    if tools:
        out["tools"] = tools
    return out


def _images(row: dict, messages: list[dict]) -> list[str]:
    """A row's images in order: from image content parts, or from the `images` column (the ms-swift /
    LLaMA-Factory form: <image> placeholders in the text), checked against the placeholders."""
    return _media(row, messages, "images", IMAGE, _image_column)


def _videos(row: dict, messages: list[dict]) -> list:
    """A row's videos in order (files or frame lists), from video parts or the `videos` column (<video>)."""
    return _media(row, messages, "videos", VIDEO, _video_column)


def _no_videos(row: dict, out: dict, task: str) -> dict:
    """Rows of the tasks that do not read videos yet, refused when they hold any."""
    keys = [k for k in ("messages", "rejected_messages") if k in out]
    if row.get("videos") is not None or any(m.get("videos") for k in keys for m in out[k]):
        raise RowError(f"videos are trained by sft only for now ({task} rows read images)")
    return out


def _media(row: dict, messages: list[dict], key: str, marker: str, column_reader) -> list:
    from_parts = [s for m in messages for s in m.pop(key, ())]
    column = row.get(key)
    if column is not None and from_parts:
        raise RowError(f"{key} both in the '{key}' column and in content parts; give them one way")
    found = from_parts or column_reader(column)
    problem = misplaced_media(messages, marker, key, len(found)) if found else None
    if problem:
        raise RowError(problem)
    return found


def _pair_images(row: dict, out: dict) -> dict:
    """A preference row's images: the prompt's, which chosen and rejected share (in parts or the column)."""
    sides = [[s for m in out[key] for s in m.get("images", ())] for key in ("messages", "rejected_messages")]
    if sides[0] != sides[1]:
        raise RowError("chosen and rejected have different images; images belong to the prompt they share")
    if not sides[0] and row.get("images") is None:
        return out
    out["rejected_messages"] = [{k: v for k, v in m.items() if k != "images"} for m in out["rejected_messages"]]
    images = _images(row, out["messages"])  # (takes the parts' images off the chosen side's messages)
    _images({"images": images}, out["rejected_messages"])  # the same placeholder count on the rejected side
    if images:
        out["images"] = images
    return out


def _video_column(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise RowError(f"'videos' must be a list of videos (paths, URLs, data URIs or lists of frames), "
                       f"got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict):  # {"path": ...}
            item = item.get("path") or item.get("url")
        if not is_video_source(item):
            raise RowError(f"'videos' item {i} must be a path, URL, data URI or a list of frame images")
        out.append(item)
    return out


def _image_column(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise RowError(f"'images' must be a list of paths, URLs or data URIs, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict):  # ms-swift's {"path": ...}; an HF datasets Image (parquet): {bytes, path}
            data = item.get("bytes")
            item = f"data:image;base64,{base64.b64encode(data).decode()}" if isinstance(data, bytes) and data else \
                item.get("path") or item.get("url")  # (its bytes first, as datasets reads it: the path may be gone)
        if not isinstance(item, str) or not item:
            raise RowError(f"'images' item {i} must be a path, URL or data URI")
        out.append(item)
    return out


CHOICE_LETTERS = "ABCDEFGHIJ"
CHOICE_INSTRUCTION = "Answer with the letter of the correct option."


def multiple_choice(row: dict) -> tuple[str, str]:
    """(prompt, answer letter) of an MMLU-style row: question, choices (a list), answer (0-based index or letter).
    The prompt lists the options as `A. ...` lines and ends with CHOICE_INSTRUCTION."""
    question = _text(row["question"], "question")
    choices = [_text(c, f"choice {i}") for i, c in enumerate(_as_list(row["choices"], "choices"))]
    if not 2 <= len(choices) <= len(CHOICE_LETTERS):
        raise RowError(f"'choices' must hold 2 to {len(CHOICE_LETTERS)} options, got {len(choices)}")
    letters = CHOICE_LETTERS[:len(choices)]
    answer = row["answer"]
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer.strip())
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        letter = letters[answer]
    elif isinstance(answer, str) and answer.strip().upper() in letters and answer.strip():
        letter = answer.strip().upper()
    else:
        raise RowError(f"'answer' must be a choice index 0-{len(choices) - 1} or a letter {letters[0]}-{letters[-1]}, "
                       f"got {answer!r}")
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(letters, choices))
    return f"{question}\n{options}\n{CHOICE_INSTRUCTION}", letter


def _as_list(value, name: str) -> list:
    if not isinstance(value, list):
        raise RowError(f"'{name}' must be a list, got {type(value).__name__}")
    if not value:
        raise RowError(f"'{name}' is empty")
    return value


def _text(value, where: str) -> str:
    """A string field (alpaca, query/response, ShareGPT values); a list of text parts is joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        text, reasoning, calls, images, videos = _parts(value, where)
        if reasoning is None and not calls and not images and not videos:
            return text
    raise RowError(f"{where} must be a string, got {type(value).__name__}")


def _parts(value: list, where: str):
    try:
        return message_content(value, 0)
    except MessageError as e:
        raise RowError(str(e).replace("message 0", where)) from None


def _message(m, i: int) -> dict:
    try:
        return normalize_message(m, i)
    except MessageError as e:
        raise RowError(str(e)) from None


def _tool_call(call, i: int) -> dict:
    try:
        return tool_call(call, i)
    except MessageError as e:
        raise RowError(str(e)) from None


def _tools(value) -> list | None:
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError("'tools' is a string that is not JSON") from None
    if not isinstance(value, list):
        raise RowError(f"'tools' must be a list, got {type(value).__name__}")
    return [t if "type" in t else {"type": "function", "function": t} for t in value]


def _sharegpt(row: dict) -> list[dict]:
    messages = []
    if isinstance(row.get("system"), str) and row["system"]:
        messages.append({"role": "system", "content": row["system"]})
    for i, turn in enumerate(_as_list(row["conversations"], "conversations")):
        if not isinstance(turn, dict):
            raise RowError(f"turn {i} must be an object, got {type(turn).__name__}")
        src = turn.get("from", turn.get("role"))
        role = SHAREGPT_ROLES.get(src)
        if role is None:
            raise RowError(f"turn {i} has unknown speaker {src!r} (expected one of {', '.join(SHAREGPT_ROLES)})")
        value = _text(turn.get("value", turn.get("content")), f"turn {i} value")
        if src == "function_call":
            try:
                call = json.loads(value)
            except json.JSONDecodeError:
                raise RowError(f"turn {i}: function_call value is not JSON") from None
            calls = call if isinstance(call, list) else [call]
            messages.append({"role": "assistant", "content": "", "tool_calls": [_tool_call(c, i) for c in calls]})
        else:
            messages.append({"role": role, "content": value})
    return messages


def _turns(row: dict, query: str, response: str) -> list[dict]:
    """system + history pairs + the final query/response (alpaca and query/response rows)."""
    messages = []
    if row.get("system"):
        messages.append({"role": "system", "content": _text(row["system"], "system")})
    for j, pair in enumerate(row.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RowError(f"history item {j} must be a [question, answer] pair")
        messages += [{"role": "user", "content": _text(pair[0], f"history {j} question")},
                     {"role": "assistant", "content": _text(pair[1], f"history {j} answer")}]
    messages += [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
    return messages


def _alpaca(row: dict) -> list[dict]:
    instruction = _text(row["instruction"], "instruction")
    extra = _text(row.get("input") or "", "input")
    return _turns(row, f"{instruction}\n{extra}" if extra else instruction, _text(row["output"], "output"))


def _prompt_completion(row: dict) -> list[dict]:
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, list) or isinstance(completion, list):
        head = [_message(m, i) for i, m in enumerate(_as_list(prompt, "prompt"))]
        tail = [_message(m, len(head) + i) for i, m in enumerate(_as_list(completion, "completion"))]
        return head + tail
    return _turns(row, _text(prompt, "prompt"), _text(completion, "completion"))


def _completion(value, where: str) -> list[dict]:
    """A completion given as a string, a ShareGPT {from, value} object, a message or a list of messages."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict) and "value" in value:
        return [{"role": "assistant", "content": _text(value["value"], f"{where} value")}]
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        return [_message(m, i) for i, m in enumerate(_as_list(value, where))]
    raise RowError(f"'{where}' must be a string, a message or a list of messages, got {type(value).__name__}")


def _prompt(row: dict) -> list[dict]:
    """The prompt of a preference/KTO/GRPO row: messages, ShareGPT conversations, or a prompt string/list."""
    if "conversations" in row:
        return _sharegpt({**row, "conversations": _as_list(row["conversations"], "conversations")})
    if "messages" in row:
        return [_message(m, i) for i, m in enumerate(_as_list(row["messages"], "messages"))]
    for key in ("prompt", "question"):  # question: GSM8K's own layout
        if key not in row:
            continue
        prompt = row[key]
        if isinstance(prompt, str):
            system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
            return system + [{"role": "user", "content": prompt}]
        return [_message(m, i) for i, m in enumerate(_as_list(prompt, key))]
    raise RowError(f"no prompt (fields: {', '.join(sorted(row))}); expected messages, conversations, prompt or "
                   "question")


def _preference(row: dict) -> dict:
    if "chosen_messages" in row or "rejected_messages" in row:  # LLaMA-Factory v1: two whole conversations
        row = {k: v for k, v in row.items() if k not in ("chosen_messages", "rejected_messages")} | {
            "chosen": row.get("chosen_messages"), "rejected": row.get("rejected_messages")}
        if not isinstance(row["chosen"], list) or not isinstance(row["rejected"], list):
            raise RowError("chosen_messages and rejected_messages must both be lists of messages")
    if "rejected" not in row and "rejected_response" not in row:
        raise RowError(f"no 'rejected', 'rejected_response' or 'rejected_messages' (fields: {', '.join(sorted(row))})")
    # TRL's implicit-prompt form has no prompt field: chosen/rejected are whole conversations sharing it
    explicit = any(k in row for k in ("messages", "conversations", "prompt"))
    prompt = _prompt(row) if explicit else []
    if "chosen" in row:
        chosen = _completion(row["chosen"], "chosen")
    elif "rejected" in row:
        raise RowError(f"'rejected' without 'chosen' (fields: {', '.join(sorted(row))})")
    else:  # ms-swift form: messages end with the chosen answer, rejected_response holds the other
        if not prompt or prompt[-1]["role"] != "assistant":
            raise RowError("with 'rejected_response', messages must end with the chosen assistant turn")
        prompt, chosen = prompt[:-1], prompt[-1:]
    rejected = _completion(row.get("rejected", row.get("rejected_response")), "rejected")
    if not prompt:
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    if not any(m["role"] == "assistant" for m in chosen) or not any(m["role"] == "assistant" for m in rejected):
        raise RowError("chosen and rejected must each end in an assistant answer")
    if chosen == rejected:
        raise UselessRow("chosen equals rejected")
    out = {"messages": prompt + chosen, "rejected_messages": prompt + rejected}
    if row.get("margin") is not None:  # reward-model margin (how much better chosen is)
        if not isinstance(row["margin"], (int, float)) or isinstance(row["margin"], bool):
            raise RowError(f"'margin' must be a number, got {row['margin']!r}")
        out["margin"] = float(row["margin"])
    tools = _tools(row.get("tools"))
    if tools:
        out["tools"] = tools
    return out


def _kto(row: dict) -> dict:
    label = row.get("label", row.get("kto_tag"))
    if not isinstance(label, bool):
        raise RowError(f"KTO rows need a boolean 'label', got {label!r}")
    if "completion" in row:
        messages = _prompt(row) + _completion(row["completion"], "completion")
        images, tools = _images(row, messages), _tools(row.get("tools"))
    else:
        canonical = to_canonical(row)
        messages, images, tools = canonical["messages"], canonical.get("images", []), canonical.get("tools")
    if messages[-1]["role"] != "assistant":
        raise RowError("a KTO row must end with the assistant answer that is labelled")
    return {"messages": messages, "label": label, **({"images": images} if images else {}),
            **({"tools": tools} if tools else {})}


def _grpo(row: dict) -> dict:
    prompt = _prompt(row)
    if prompt and prompt[-1]["role"] == "assistant":
        prompt = prompt[:-1]  # a reference answer in the data is not part of the prompt
    if not prompt or prompt[-1]["role"] != "user":
        raise RowError("a GRPO prompt must end with a user message")
    extra = {k: v for k, v in row.items() if k not in ("messages", "conversations", "prompt", "system")}
    if "question" in row and "prompt" not in row and "messages" not in row and "conversations" not in row:
        extra.pop("question")  # GSM8K's layout: the question is the prompt, its answer the solution
        if "answer" in extra and "solution" not in extra:
            extra["solution"] = extra.pop("answer")
    return {"messages": prompt, **extra}

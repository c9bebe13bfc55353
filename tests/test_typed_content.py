"""Typed content parts (LLaMA-Factory v1, OpenAI parts), one message normalisation for data and templates,
placeholders, GSM8K's own layout. Data files: first rows of LLaMA-Factory's v1 demo files (see NOTICE)."""
import json

import pytest

from conftest import DATA
from swiftlike.data.dataset import encode_rows, load_rows
from swiftlike.data.formats import RowError, to_canonical
from swiftlike.errors import UserError
from swiftlike.templates import IGNORE_INDEX, get_template

V1 = DATA / "llamafactory"


def _trained(tokenizer, enc) -> list[str]:
    runs, current = [], []
    for tok, lab in zip(enc["input_ids"], enc["labels"]):
        if lab != IGNORE_INDEX:
            current.append(tok)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


def _official(tokenizer, messages, tools=None, **kw):
    template = (DATA / "chat_templates" / "qwen3.jinja").read_text()
    return tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False, **kw)


def test_v1_sft_trains_the_assistant_text(qwen3_tokenizer):
    raw = [json.loads(line) for line in (V1 / "v1_sft_demo.jsonl").open()]
    rows = load_rows([str(V1 / "v1_sft_demo.jsonl")], names={"name": "Wren", "author": "swiftlike"})
    template = get_template("qwen3", qwen3_tokenizer)
    encoded = [template.encode(r) for r in rows]
    assert len({tuple(e["input_ids"]) for e in encoded}) == len(raw)  # not 40 copies of an empty chat
    for source, enc in zip(raw, encoded):
        answer = source["messages"][1]["content"][0]["value"]
        answer = answer.replace("{{name}}", "Wren").replace("{{author}}", "swiftlike")
        assert _trained(qwen3_tokenizer, enc) == [f"<think>\n\n</think>\n\n{answer}<|im_end|>"]


def test_v1_reasoning_and_tool_call_parts_match_the_official_template(qwen3_tokenizer):
    template = get_template("qwen3", qwen3_tokenizer)
    rows = load_rows([str(V1 / "reason_tool_use_demo_20.jsonl")])
    raw = [json.loads(line) for line in (V1 / "reason_tool_use_demo_20.jsonl").open()]
    assert len(rows) == len(raw) == 20
    with_calls = 0
    for source, row in zip(raw, rows):
        messages = []
        for m in source["messages"]:  # what the official template reads, built from the parts by hand
            parts = m["content"]
            msg = {"role": m["role"], "content": "".join(p["value"] for p in parts if p["type"] == "text")}
            thoughts = "".join(p["value"] for p in parts if p["type"] == "reasoning")
            if thoughts:
                msg["reasoning_content"] = thoughts
            calls = [json.loads(p["value"]) for p in parts if p["type"] == "tool_call"]
            if calls:
                msg["tool_calls"] = [{"type": "function", "function": c} for c in calls]
                with_calls += 1
            messages.append(msg)
        tools = json.loads(source["tools"])
        official = _official(qwen3_tokenizer, messages, tools)
        enc = template.encode(row)
        assert enc["input_ids"] == qwen3_tokenizer(official, add_special_tokens=False)["input_ids"]
        final = row["messages"][-1]
        assert final.get("reasoning") and final["reasoning"] in "".join(_trained(qwen3_tokenizer, enc))
    assert with_calls >= 10


def test_v1_preference_rows(qwen3_tokenizer):
    rows = load_rows([str(V1 / "v1_dpo_demo.jsonl")], task="preference")
    raw = [json.loads(line) for line in (V1 / "v1_dpo_demo.jsonl").open()]
    assert len(rows) == len(raw)
    for source, row in zip(raw, rows):
        chosen = source["chosen_messages"][-1]["content"][0]["value"]
        rejected = source["rejected_messages"][-1]["content"][0]["value"]
        assert row["messages"][-1]["content"] == chosen and row["rejected_messages"][-1]["content"] == rejected
        assert row["messages"][:-1] == row["rejected_messages"][:-1]
        assert all(m.get("loss") is False for m in row["messages"][:-1])


@pytest.mark.parametrize("part, message", [
    ({"type": "audio", "audio": "cat.wav"}, "message 0 part 1 is 'audio' content: audio and file parts are "
                                            "not supported yet"),
    ({"type": "input_audio", "input_audio": {}}, "part 1 is 'input_audio' content: audio and file"),
    ({"type": "video", "video": []}, "message 0 part 1: a video part needs its source"),
    ({"type": "hologram", "value": "x"}, "message 0 part 1 has unknown type 'hologram'"),
    ({"type": "text", "content": "x"}, "message 0 part 1: a text part needs its text as a string under 'text' or "
                                       "'value'"),
    ({"type": "tool_call", "value": "not json"}, "tool_call value is not JSON"),
])
def test_unreadable_parts_are_refused_with_the_part_named(part, message):
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "look:"}, part]},
                        {"role": "assistant", "content": "ok"}]}
    with pytest.raises(RowError, match=message.replace("(", r"\(")):
        to_canonical(row)


def test_refusal_names_file_and_row(tmp_path, qwen3_tokenizer):
    path = tmp_path / "d.jsonl"
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    bad = {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "v.wav"}]},
                        {"role": "assistant", "content": "b"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(UserError, match=rf"{path}:2: message 0 part 0 is 'audio' content"):
        load_rows([str(path)])
    # an image part is read, and a text-only model's template refuses it, naming file and row
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u.png"}}]},
                          {"role": "assistant", "content": "b"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(image) + "\n")
    sources = []
    rows = load_rows([str(path)], sources)
    with pytest.raises(UserError, match=rf"{path}:2: template qwen3 is text-only and cannot read images"):
        encode_rows(rows, get_template("qwen3", qwen3_tokenizer), 64, sources)


@pytest.mark.parametrize("weight, loss", [(0, False), (0.0, False), (1, True), (1.0, True)])
def test_loss_weight(weight, loss):
    row = to_canonical({"messages": [{"role": "user", "content": "a", "loss_weight": weight},
                                     {"role": "assistant", "content": "b", "weight": weight}]})
    assert [m["loss"] for m in row["messages"]] == [loss, loss]


def test_fractional_loss_weight_refused():
    with pytest.raises(RowError, match="loss_weight must be 0 or 1"):
        to_canonical({"messages": [{"role": "user", "content": "a"},
                                   {"role": "assistant", "content": "b", "loss_weight": 0.5}]})


def test_unknown_message_key_refused():
    with pytest.raises(RowError, match="message 1 has unknown key 'thoughts'"):
        to_canonical({"messages": [{"role": "user", "content": "a"},
                                   {"role": "assistant", "content": "b", "thoughts": "hidden"}]})


def test_an_openai_client_reply_sent_back_as_model_dump_is_read():
    """The openai client's message.model_dump() carries audio and function_call as null: the next turn sends it."""
    from openai.types.chat import ChatCompletionMessage

    reply = ChatCompletionMessage(role="assistant", content="b").model_dump()
    assert reply["audio"] is None and reply["function_call"] is None
    row = to_canonical({"messages": [{"role": "user", "content": "a"}, reply, {"role": "user", "content": "c"}]})
    assert row["messages"][1] == {"role": "assistant", "content": "b"}
    with pytest.raises(RowError, match="message 1 has unknown key 'function_call'"):  # a real one is not dropped
        to_canonical({"messages": [{"role": "user", "content": "a"},
                                   {**reply, "function_call": {"name": "f", "arguments": "{}"}}]})


def test_public_template_api_reads_reasoning_content(qwen3_tokenizer):
    """The key the official Qwen3 template reads is trained, not an empty <think> block."""
    messages = [{"role": "user", "content": "Why?"},
                {"role": "assistant", "content": "Because.", "reasoning_content": "Let me think."}]
    template = get_template("Qwen/Qwen3-8B", qwen3_tokenizer)
    official = _official(qwen3_tokenizer, messages)
    assert "Let me think." in official
    assert template.render_text(messages) == official
    enc = template.encode({"messages": messages})
    assert enc["input_ids"] == qwen3_tokenizer(official, add_special_tokens=False)["input_ids"]
    assert _trained(qwen3_tokenizer, enc) == ["<think>\nLet me think.\n</think>\n\nBecause.<|im_end|>"]
    prompt = [{"role": "user", "content": [{"type": "text", "text": "Why?"}]}]
    assert template.encode_prompt(prompt) == qwen3_tokenizer(
        _official(qwen3_tokenizer, [{"role": "user", "content": "Why?"}], add_generation_prompt=True),
        add_special_tokens=False)["input_ids"]


def test_public_template_api_refuses_unknown_keys(qwen3_tokenizer):
    template = get_template("qwen3", qwen3_tokenizer)
    with pytest.raises(UserError, match="message 1 has unknown key 'thinking'"):
        template.encode({"messages": [{"role": "user", "content": "a"},
                                      {"role": "assistant", "content": "b", "thinking": "c"}]})


def _identity_file(tmp_path):
    path = tmp_path / "id.jsonl"
    rows = [{"messages": [{"role": "user", "content": "who?"},
                          {"role": "assistant", "content": f"I am {{{{name}}}} by {{{{author}}}} ({i})"}]}
            for i in range(3)] + [{"messages": [{"role": "user", "content": "2+2?"},
                                                {"role": "assistant", "content": "4"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_unfilled_placeholders_warn_with_the_count(tmp_path, capsys):
    path = _identity_file(tmp_path)
    rows = load_rows([str(path)])
    assert "{{name}}" in rows[0]["messages"][1]["content"]
    err = capsys.readouterr().err
    assert f"{path}: 3 rows contain {{{{name}}}} / {{{{author}}}} placeholders" in err
    assert "--model_name and --model_author" in err


def test_placeholders_filled_in_any_file(tmp_path, capsys):
    rows = load_rows([str(_identity_file(tmp_path))], names={"name": "Wren", "author": "Ada"})
    assert rows[0]["messages"][1]["content"] == "I am Wren by Ada (0)"
    assert "placeholders" not in capsys.readouterr().err


def test_gsm8k_layout_is_a_grpo_row_without_columns():
    row = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"}
    grpo = to_canonical(row, "grpo")
    assert grpo == {"messages": [{"role": "user", "content": row["question"]}], "solution": row["answer"]}
    sft = to_canonical(row)
    assert [m["role"] for m in sft["messages"]] == ["user", "assistant"]
    assert sft["messages"][1]["content"] == row["answer"]

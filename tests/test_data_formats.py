"""Every supported input format becomes the exact canonical row; real samples load."""
import json

import pytest

from conftest import DATA
from swiftlike.data.dataset import encode_rows, load_rows
from swiftlike.data.formats import RowError, to_canonical
from swiftlike.templates import get_template


def test_alpaca_real_sample():
    rows = load_rows([str(DATA / "alpaca_en_sample.json")])
    raw = json.loads((DATA / "alpaca_en_sample.json").read_text())
    assert len(rows) == len(raw) == 20
    with_input = next(i for i, r in enumerate(raw) if r["input"])
    r = raw[with_input]
    assert rows[with_input] == {"messages": [{"role": "user", "content": r["instruction"] + "\n" + r["input"]},
                                             {"role": "assistant", "content": r["output"]}]}
    assert rows[0]["messages"][0] == {"role": "user", "content": raw[0]["instruction"]}


def test_alpaca_system_and_history():
    row = {"instruction": "q2", "input": "", "output": "a2", "system": "s", "history": [["q1", "a1"]]}
    assert to_canonical(row)["messages"] == [
        {"role": "system", "content": "s"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]


def test_sharegpt_real_sample():
    rows = load_rows([str(DATA / "sharegpt_fastchat_sample.json")])
    assert rows[0]["messages"] == [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Vicuna, a language model trained by researchers from Large Model "
                                         "Systems Organization (LMSYS)."},
        {"role": "user", "content": "Have a nice day!"}, {"role": "assistant", "content": "You too!"}]


def test_sharegpt_tool_calls_real_sample():
    rows = load_rows([str(DATA / "glaive_toolcall_sample.json")])
    row = rows[0]
    assert row["tools"][0]["type"] == "function"
    call = next(m for m in row["messages"] if m.get("tool_calls"))
    assert call["tool_calls"] == [{"type": "function", "function": {
        "name": "search_recipes", "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]}}}]
    assert [m["role"] for m in row["messages"]][2:5] == ["user", "assistant", "tool"]


def test_openai_messages_with_reasoning_and_parts():
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                        {"role": "assistant", "content": "c", "reasoning_content": "r", "loss": False},
                        {"role": "assistant", "content": None, "tool_calls": [
                            {"function": {"name": "f", "arguments": "{\"x\": 1}"}}]}]}
    assert to_canonical(row)["messages"] == [
        {"role": "user", "content": "ab"}, {"role": "assistant", "content": "c", "reasoning": "r", "loss": False},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function",  # (arguments kept as given)
                                                              "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "x"}, "unknown format (fields: prompt)"),
    ({"messages": "hi"}, "'messages' must be a list, got str"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "message 0 has unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": 3}]}, "message 0 content must be a string or a list of parts, got int"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn to train on"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "turn 0 has unknown speaker 'robot'"),
])
def test_bad_rows_name_the_problem(row, message):
    with pytest.raises(RowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        to_canonical(row)


def test_encode_drops_and_counts_long_rows(qwen3_tokenizer):
    template = get_template("qwen3", qwen3_tokenizer)
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x " * n}]}
            for n in (1, 2, 500)]
    encoded, stats = encode_rows(rows, template, max_length=64)
    assert len(encoded) == 2
    assert stats.dropped == {"longer than max_length 64": 1}
    assert "rows read 3, kept 2, dropped 1 (longer than max_length 64)" in stats.report()


def test_query_response_and_prompt_completion():
    assert to_canonical({"query": "q", "response": "r", "history": [["q0", "r0"]], "system": "s"})["messages"] == [
        {"role": "system", "content": "s"}, {"role": "user", "content": "q0"}, {"role": "assistant", "content": "r0"},
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]
    assert to_canonical({"prompt": "p", "completion": "c"})["messages"] == [
        {"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}]
    conversational = {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "p"}],
                      "completion": [{"role": "assistant", "content": "c"}]}
    assert to_canonical(conversational)["messages"] == [
        {"role": "system", "content": "s"}, {"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}]

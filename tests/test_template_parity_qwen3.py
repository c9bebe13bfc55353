"""Qwen3 templates are token-for-token equal to the official chat templates (real Qwen3 tokenizer)."""
import copy

import pytest

from conftest import DATA
from swiftlike.templates import IGNORE_INDEX, get_template

OFFICIAL = {
    "qwen3": "qwen3.jinja",
    "qwen3_instruct_2507": "qwen3-instruct-2507.jinja",
    "qwen3_thinking_2507": "qwen3-thinking-2507.jinja",
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}

CASES = {
    "single": ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], None),
    "system": ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}], None),
    "multi_turn": ([{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
                    {"role": "user", "content": "and 2+2?"}, {"role": "assistant", "content": "4"}], None),
    "empty_assistant": ([{"role": "user", "content": "Say nothing"}, {"role": "assistant", "content": ""}], None),
    "unicode": ([{"role": "user", "content": "你好，世界。🙂 Ünïcödé"},
                 {"role": "assistant", "content": "こんにちは 👋 — ça va?"}], None),
    "whitespace": ([{"role": "system", "content": "  sys  \n"}, {"role": "user", "content": "\n\n  lead and trail  \n\n"},
                    {"role": "assistant", "content": "\n\n  spaced answer \n\n"}], None),
    "reasoning_field": ([{"role": "user", "content": "Why?"},
                         {"role": "assistant", "content": "Because.", "reasoning": "Let me think.\nOK."}], None),
    "reasoning_inline": ([{"role": "user", "content": "Why?"},
                          {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nBecause."}], None),
    "reasoning_dropped_earlier": ([{"role": "user", "content": "a"},
                                   {"role": "assistant", "content": "A", "reasoning": "first thoughts"},
                                   {"role": "user", "content": "b"},
                                   {"role": "assistant", "content": "B", "reasoning": "second thoughts"}], None),
    "tools": ([{"role": "system", "content": "You help."}, {"role": "user", "content": "Weather in Zürich?"},
               {"role": "assistant", "content": "", "tool_calls": [CALL]},
               {"role": "tool", "content": '{"temp": 21}'},
               {"role": "assistant", "content": "It is 21 °C."}], [WEATHER]),
    "tools_no_system_two_calls": ([{"role": "user", "content": "Two cities"},
                                   {"role": "assistant", "content": "Checking.", "tool_calls": [
                                       CALL, {"type": "function", "function": {"name": "get_weather",
                                                                               "arguments": '{"city": "Oslo"}'}}]},
                                   {"role": "tool", "content": "21"}, {"role": "tool", "content": "3"},
                                   {"role": "assistant", "content": "21 and 3.", "reasoning": "compare"}], [WEATHER]),
    "tool_reasoning_after_query": ([{"role": "user", "content": "q"},
                                    {"role": "assistant", "content": "", "reasoning": "need tool", "tool_calls": [CALL]},
                                    {"role": "tool", "content": "r"},
                                    {"role": "assistant", "content": "done"}], [WEATHER]),
    "mid_system": ([{"role": "user", "content": "u"}, {"role": "system", "content": "late system"},
                    {"role": "assistant", "content": "a"}], None),
}


def _official(tokenizer, template_name, messages, tools, **kw):
    chat_template = (DATA / "chat_templates" / OFFICIAL[template_name]).read_text()
    msgs = copy.deepcopy(messages)
    for m in msgs:
        if "reasoning" in m:
            m["reasoning_content"] = m.pop("reasoning")
    return tokenizer.apply_chat_template(msgs, tools=tools, chat_template=chat_template, tokenize=False, **kw)


@pytest.mark.parametrize("template_name", list(OFFICIAL))
@pytest.mark.parametrize("case", list(CASES))
def test_training_text_and_ids_match_official(qwen3_tokenizer, template_name, case):
    messages, tools = CASES[case]
    template = get_template(template_name, qwen3_tokenizer)
    official = _official(qwen3_tokenizer, template_name, messages, tools)
    assert template.render_text(messages, tools) == official
    enc = template.encode({"messages": messages, "tools": tools})
    assert enc["input_ids"] == qwen3_tokenizer(official, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template_name", list(OFFICIAL))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("enable_thinking", [None, False])
def test_generation_prompt_matches_official(qwen3_tokenizer, template_name, case, enable_thinking):
    messages, tools = CASES[case]
    prompt = [m for m in messages[:-1]]  # drop the final assistant turn
    kw = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    template = get_template(template_name, qwen3_tokenizer)
    official = _official(qwen3_tokenizer, template_name, prompt, tools, add_generation_prompt=True, **kw)
    assert template.render_text(prompt, tools, add_generation_prompt=True, **kw) == official
    assert template.encode_prompt(prompt, tools, **kw) == qwen3_tokenizer(official, add_special_tokens=False)["input_ids"]


def _trained_text(tokenizer, enc):
    runs, current = [], []
    for tok, lab in zip(enc["input_ids"], enc["labels"]):
        if lab == IGNORE_INDEX:
            if current:
                runs.append(tokenizer.decode(current))
                current = []
        else:
            assert lab == tok
            current.append(tok)
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_labels_are_assistant_turns_with_end_token(qwen3_tokenizer):
    template = get_template("qwen3", qwen3_tokenizer)
    messages, tools = CASES["tools"]
    runs = _trained_text(qwen3_tokenizer, template.encode({"messages": messages, "tools": tools}))
    assert runs == ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call><|im_end|>',
                    "<think>\n\n</think>\n\nIt is 21 °C.<|im_end|>"]


def test_multi_turn_labels_and_end_token_always_trained(qwen3_tokenizer):
    template = get_template("qwen3_instruct_2507", qwen3_tokenizer)
    enc = template.encode({"messages": CASES["multi_turn"][0]})
    im_end = qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert _trained_text(qwen3_tokenizer, enc) == ["2<|im_end|>", "<think>\n\n</think>\n\n4<|im_end|>"]
    ends = [i for i, t in enumerate(enc["input_ids"]) if t == im_end]
    assert [enc["labels"][i] == im_end for i in ends] == [False, True, False, True]


def test_loss_scope_and_per_message_loss(qwen3_tokenizer):
    messages = copy.deepcopy(CASES["multi_turn"][0])
    last = get_template("qwen3", qwen3_tokenizer, loss_scope="last_assistant")
    assert _trained_text(qwen3_tokenizer, last.encode({"messages": messages})) == ["<think>\n\n</think>\n\n4<|im_end|>"]
    everything = get_template("qwen3", qwen3_tokenizer, loss_scope="all").encode({"messages": messages})
    assert IGNORE_INDEX not in everything["labels"]
    messages[1]["loss"] = False
    messages[2]["loss"] = True
    runs = _trained_text(qwen3_tokenizer, get_template("qwen3", qwen3_tokenizer).encode({"messages": messages}))
    assert runs == ["<|im_start|>user\nand 2+2?<|im_end|>\n", "<think>\n\n</think>\n\n4<|im_end|>"]


def test_template_by_model_id(qwen3_tokenizer):
    assert get_template("Qwen/Qwen3-4B-Thinking-2507", qwen3_tokenizer).name == "qwen3_thinking_2507"
    assert get_template("qwen/qwen3-8b", qwen3_tokenizer).name == "qwen3"

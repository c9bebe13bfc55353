"""Every registered family renders exactly the official chat template's text (string parity through
transformers' chat-template machinery), raises where the official template raises, and trains exactly
the assistant turns with their end-of-turn marker. Qwen3 is also checked token for token in
test_template_parity_qwen3.py. Deliberate, documented deviations are tested explicitly below.
"""
import copy
import datetime
import json

import pytest
from jinja2.exceptions import TemplateError as JinjaError
from transformers.utils import chat_template_utils
from transformers.utils.chat_template_utils import render_jinja_template

from conftest import DATA
from test_template_parity_qwen3 import WEATHER
from swiftlike.templates import TEMPLATES, TemplateError, get_template

FIXED_DAY = datetime.datetime(2025, 6, 20)  # one date for both sides, so a run crossing midnight still compares


class _FixedClock(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_DAY


@pytest.fixture(autouse=True)
def _official_today(monkeypatch):
    """The official Mistral-Small template reads strftime_now (transformers' datetime.now) at render time."""
    monkeypatch.setattr(chat_template_utils, "datetime", _FixedClock)
# template -> (official file, bos, eos, official extra kwargs)
OFFICIAL = {
    "qwen2_5": ("qwen2.5-instruct.jinja", None, "<|im_end|>", {}),
    "qwq": ("qwq-32b.jinja", None, "<|im_end|>", {}),
    "llama3": ("llama-3-instruct.jinja", "<|begin_of_text|>", "<|eot_id|>", {}),
    "llama3_1": ("llama-3.1-instruct.jinja", "<|begin_of_text|>", "<|eot_id|>", {}),
    "llama3_2": ("llama-3.2-instruct.jinja", "<|begin_of_text|>", "<|eot_id|>", {"date_string": "01 Jan 2025"}),
    "mistral_v1": ("mixtral-8x7b-instruct-v0.1.jinja", "<s>", "</s>", {}),
    "mistral_v3": ("mistral-7b-instruct-v0.3_xinference.jinja", "<s>", "</s>", {}),
    "mistral_nemo": ("mistral-nemo-instruct-2407.jinja", "<s>", "</s>", {}),
    "mistral_small": ("mistral-small-3.2-24b-instruct-2506.jinja", "<s>", "</s>", {}),
    "gemma2": ("gemma-2-it.jinja", "<bos>", "<eos>", {}),
    "gemma3": ("gemma-3-it.jinja", "<bos>", "<eos>", {}),
    "phi3_5": ("phi-3.5-mini-instruct.jinja", "<s>", "<|endoftext|>", {}),
    "phi4": ("phi-4.jinja", None, "<|endoftext|>", {}),
    "deepseek_r1": ("deepseek-r1.jinja", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", {}),
    "deepseek_r1_distill": ("deepseek-r1-distill-qwen.jinja", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", {}),
    "deepseek_v3": ("deepseek-v3-0324.jinja", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", {}),
    "deepseek_v3_1": ("deepseek-v3.1.jinja", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", {}),
    "internlm2": ("internlm2-chat-7b.jinja", "<s>", "</s>", {}),
    "internlm2_5": ("internlm2.5-chat_xinference.jinja", "<s>", "</s>", {}),
    "yi1_5": ("yi-1.5-chat.jinja", None, "<|endoftext|>", {}),
    "minicpm4": ("minicpm4.jinja", None, "</s>", {}),
    "glm4": ("glm-4-9b-chat.jinja", None, "<|endoftext|>", {}),
    "qwen3": ("qwen3.jinja", None, "<|im_end|>", {}),
    "qwen3_instruct_2507": ("qwen3-instruct-2507.jinja", None, "<|im_end|>", {}),
    "qwen3_thinking_2507": ("qwen3-thinking-2507.jinja", None, "<|im_end|>", {}),
}
OPTS = {"llama3_2": {"date_string": "01 Jan 2025"}, "mistral_small": {"date_string": FIXED_DAY.strftime("%Y-%m-%d")}}
INLINE_REASONING = {"qwq", "deepseek_r1", "deepseek_r1_distill", "deepseek_v3_1"}  # templates that read <think> inline
STRING_ARGUMENTS = {"deepseek_r1", "deepseek_r1_distill", "deepseek_v3", "deepseek_v3_1"}

CALL = {"type": "function", "id": "call00001", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}

CASES = {
    "single": ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], None),
    "system": ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}], None),
    "multi_turn": ([{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
                    {"role": "user", "content": "and 2+2?"}, {"role": "assistant", "content": "4"}], None),
    "system_multi_turn": ([{"role": "system", "content": "Answer with digits."}, {"role": "user", "content": "1+1?"},
                           {"role": "assistant", "content": "2"}, {"role": "user", "content": "and 2+2?"},
                           {"role": "assistant", "content": "4"}], None),
    "empty_assistant": ([{"role": "user", "content": "Say nothing"}, {"role": "assistant", "content": ""}], None),
    "unicode": ([{"role": "user", "content": "你好，世界。🙂 Ünïcödé"},
                 {"role": "assistant", "content": "こんにちは 👋 — ça va?"}], None),
    "whitespace": ([{"role": "user", "content": "\n\n  lead and trail  \n\n"},
                    {"role": "assistant", "content": "\n\n  spaced answer \n\n"}], None),
    "reasoning_history": ([{"role": "user", "content": "a"},
                           {"role": "assistant", "content": "A", "reasoning": "first thoughts"},
                           {"role": "user", "content": "b"}, {"role": "assistant", "content": "B"}], None),
    "reasoning_last": ([{"role": "user", "content": "Why?"},
                        {"role": "assistant", "content": "Because.", "reasoning": "Let me think."}], None),
    "tools": ([{"role": "system", "content": "You help."}, {"role": "user", "content": "Weather in Zürich?"},
               {"role": "assistant", "content": "", "tool_calls": [CALL]},
               {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call00001"},
               {"role": "assistant", "content": "It is 21 °C."}], [WEATHER]),
    "two_users_end": ([{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
                       {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}], None),
}


def glm_native(messages, tools):
    """GLM-4's own message form: observation role, tool calls as function-named assistant items, tools in a message."""
    from swiftlike.templates.glm import glm_items

    items = [{"role": role, "metadata": metadata, "content": content}
             for role, metadata, content, _ in glm_items(messages)]
    if tools and items:
        items[0]["tools"] = tools
    return items


def official_messages(template, messages):
    msgs = copy.deepcopy(messages)
    for i, m in enumerate(msgs):
        reasoning = m.pop("reasoning", None) if template in INLINE_REASONING else None
        if reasoning and i == len(msgs) - 1:  # earlier turns lose their reasoning either way
            m["content"] = "<think>\n" + reasoning + "\n</think>\n\n" + m["content"]
        for call in m.get("tool_calls", []):
            if template in STRING_ARGUMENTS:
                call["function"]["arguments"] = json.dumps(call["function"]["arguments"], ensure_ascii=False)
        if template in STRING_ARGUMENTS and m.get("tool_calls") and not m["content"]:
            m["content"] = None
    return msgs


def official(template, messages, tools, add_generation_prompt=False, **kw):
    path, bos, eos, extra = OFFICIAL[template]
    chat_template = (DATA / "chat_templates" / path).read_text()
    if template == "glm4":
        messages, tools = glm_native(messages, tools), None
    rendered, _ = render_jinja_template([official_messages(template, messages)], tools=tools,
                                        chat_template=chat_template, add_generation_prompt=add_generation_prompt,
                                        bos_token=bos, eos_token=eos, **extra, **kw)
    return rendered[0]


def ours(template, messages, tools, add_generation_prompt=False, **kw):
    tpl = get_template(template, tokenizer=_NoTokenizer())
    return tpl.render_text(messages, tools, add_generation_prompt, **OPTS.get(template, {}), **kw)


class _NoTokenizer:
    """Rendering text needs no tokenizer; this stands in for one."""

    def convert_tokens_to_ids(self, token):
        return None


def _mistral_system_in_final_user(template, messages, tools):
    """The system message goes into the final user turn (as at inference when that turn was the last);
    everything after that turn renders as officially."""
    cut = max(i for i, m in enumerate(messages) if m["role"] == "user") + 1
    rest = official(template, messages[1:], tools)[len(official(template, messages[1:cut], tools)):]
    return official(template, messages[:cut], tools) + rest


def _expected(template, case, messages, tools):
    """The official text, or for documented deviations the text we render instead (see the modules)."""
    last = messages[-1]
    if template == "glm4" and last["role"] == "assistant" and (last["content"] or last.get("tool_calls")):
        return official(template, messages, tools) + "<|user|>"  # the trained stop token (see templates/glm.py)
    if template == "llama3":  # the reference copy always appends the generation header
        return official(template, messages, tools).removesuffix("<|start_header_id|>assistant<|end_header_id|>\n\n")
    if template in ("mistral_v3", "mistral_nemo") and messages[0]["role"] == "system" and last["role"] != "user":
        return _mistral_system_in_final_user(template, messages, tools)
    if last["role"] == "assistant" and last.get("reasoning") and template in ("deepseek_r1", "deepseek_r1_distill",
                                                                                "deepseek_v3_1"):
        answer, reasoning = last["content"], last["reasoning"]
        if template == "deepseek_v3_1":
            return official(template, messages[:-1], tools, True, thinking=True) + reasoning + "</think>" + answer + \
                "<｜end▁of▁sentence｜>"
        body = reasoning + "\n</think>\n\n" + answer + "<｜end▁of▁sentence｜>"
        prompt = official(template, messages[:-1], tools, True)
        return prompt + ("" if template == "deepseek_r1_distill" else "<think>\n") + body
    return official(template, messages, tools)


PAIRS = [(t, c) for t in OFFICIAL for c in CASES]


@pytest.mark.parametrize("template, case", PAIRS)
def test_training_text_matches_official(template, case):
    messages, tools = CASES[case]
    try:
        expected = _expected(template, case, messages, tools)
    except JinjaError as official_error:
        with pytest.raises(TemplateError) as ours_error:
            ours(template, messages, tools)
        assert str(ours_error.value) == str(official_error)
        return
    try:
        text = ours(template, messages, tools)
    except TemplateError as e:  # a tool call where the official template drops it (or, R1-Distill, mangles it)
        assert (template == "deepseek_r1_distill" and "tool call" in str(e)) or "has no format for" in str(e)
        return
    assert text == expected


@pytest.mark.parametrize("template, case", PAIRS)
def test_generation_prompt_matches_official(template, case):
    messages, tools = CASES[case]
    prompt = messages if messages[-1]["role"] == "user" else messages[:-1]
    try:
        if template in ("mistral_v3", "mistral_nemo") and prompt[0]["role"] == "system" and prompt[-1]["role"] != "user":
            expected = _mistral_system_in_final_user(template, prompt, tools)
        else:
            expected = official(template, prompt, tools, True)
    except JinjaError as official_error:
        with pytest.raises(TemplateError) as ours_error:
            ours(template, prompt, tools, True)
        assert str(ours_error.value) == str(official_error)
        return
    try:
        text = ours(template, prompt, tools, True)
    except TemplateError as e:  # a tool call where the official template drops it (or, R1-Distill, mangles it)
        assert (template == "deepseek_r1_distill" and "tool call" in str(e)) or "has no format for" in str(e)
        return
    assert text == expected


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_every_assistant_turn_is_trained_with_its_end_marker(template):
    messages, _ = CASES["multi_turn"]
    tpl = get_template(template, tokenizer=_NoTokenizer())
    from test_tool_calls import trained_runs

    trained = trained_runs(tpl.render(messages))
    ends = {s for s in tpl.spec.stop_words}
    assert len(trained) == 2, trained
    for text, answer in zip(trained, ("2", "4")):
        assert answer in text
        assert any(text.endswith(end) for end in ends), (template, text)


def test_every_registered_template_has_an_official_reference():
    from test_template_parity_vl import OFFICIAL as VISION  # the vision-language ones, tested there

    assert set(TEMPLATES) == set(OFFICIAL) | set(VISION)


@pytest.mark.parametrize("template", ["qwen2_5", "qwq"])
@pytest.mark.parametrize("case", list(CASES))
def test_qwen_vocabulary_templates_match_token_for_token(qwen3_tokenizer, template, case):
    """Qwen2.5 and QwQ share the Qwen3 vocabulary: compare ids with the real tokenizer too."""
    messages, tools = CASES[case]
    tpl = get_template(template, qwen3_tokenizer)
    enc = tpl.encode({"messages": messages, "tools": tools})
    assert enc["input_ids"] == qwen3_tokenizer(_expected(template, case, messages, tools),
                                               add_special_tokens=False)["input_ids"]
    im_end = qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>")
    trained_ends = [i for i, (t, lab) in enumerate(zip(enc["input_ids"], enc["labels"])) if t == im_end and lab == t]
    assert len(trained_ends) == sum(m["role"] == "assistant" for m in messages)


def _official_as_given(template, messages, tools=None, add_generation_prompt=False):
    """The official Jinja on the messages exactly as given (no adaptation)."""
    path, bos, eos, extra = OFFICIAL[template]
    rendered, _ = render_jinja_template([copy.deepcopy(messages)], tools=tools,
                                        chat_template=(DATA / "chat_templates" / path).read_text(),
                                        add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos,
                                        **extra)
    return rendered[0]


@pytest.mark.parametrize("template", ["qwen3", "qwen3_instruct_2507", "deepseek_v3", "deepseek_v3_1", "deepseek_r1"])
@pytest.mark.parametrize("arguments", ['{"city":"Oslo"}', '{"city": "Z\\u00fcrich"}', '"Oslo"'])
def test_string_tool_arguments_are_printed_as_given(template, arguments):
    """OpenAI-format data carries arguments as a JSON string, which these official templates print verbatim: ours
    re-serialised it (spacing, unicode escapes), and a string scalar lost its quotes (invalid JSON, trained)."""
    call = {"type": "function", "id": "call00001", "function": {"name": "get_weather", "arguments": arguments}}
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None if template.startswith("deepseek") else "",
                 "tool_calls": [call]}]
    assert ours(template, messages, [WEATHER]) == _official_as_given(template, messages, [WEATHER])


def test_conversations_the_parity_cases_missed():
    """Each was a difference from the official template (found by review): Qwen2.5 trained an extra "\\n" in a
    tool-call turn with reasoning and no content; a message with "reasoning": null lost its reasoning_content;
    Mistral wrote the tools twice when an earlier user message differed from the last only by its name."""
    call = {"type": "function", "id": "call00001", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    qwen = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "reasoning_content": "need tool", "tool_calls": [call]}]
    assert ours("qwen2_5", qwen, [WEATHER]) == _official_as_given("qwen2_5", qwen, [WEATHER])
    thinking = [{"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A", "reasoning": None, "reasoning_content": "r"}]
    assert ours("qwen3", thinking, None) == _official_as_given("qwen3", thinking)
    named = [{"role": "user", "content": "again", "name": "alice"}, {"role": "assistant", "content": "ok"},
             {"role": "user", "content": "again"}]
    for template in ("mistral_v3", "mistral_nemo"):
        text = ours(template, named, [WEATHER], True)
        assert text == _official_as_given(template, named, [WEATHER], True) and text.count("[AVAILABLE_TOOLS]") == 1


@pytest.mark.parametrize("template", ["llama3", "phi3_5", "phi4", "internlm2_5", "minicpm4", "yi1_5", "gemma3"])
def test_templates_that_drop_tool_calls_refuse_them(template):
    """Their official templates drop an assistant turn's tool calls: the turn trained an empty answer. A prompt's
    history (nothing trained) still renders as officially, and so does an untrained call turn."""
    _, tools = CASES["tools"]
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [CALL]}]
    with pytest.raises(TemplateError, match=f"message 1 has tool calls, which template {template} has no format"):
        ours(template, messages, tools)
    prompt = [*messages, {"role": "user", "content": "And now?"}]
    assert ours(template, prompt, tools, True) == official(template, prompt, tools, True)
    untrained = [messages[0], {**messages[1], "loss": False}, prompt[2], {"role": "assistant", "content": "Sunny."}]
    assert "Sunny." in ours(template, untrained, tools)


def test_last_assistant_trains_the_last_turn_however_many_segments_it_takes():
    """GLM-4 writes a turn as its answer, then the role token that ends it: --loss_scope last_assistant trained the
    ending <|user|> alone, not the answer."""
    from test_tool_calls import trained_runs

    messages, _ = CASES["multi_turn"]
    tpl = get_template("glm4", tokenizer=_NoTokenizer(), loss_scope="last_assistant")
    assert trained_runs(tpl.render(messages)) == ["\n4<|user|>"]
    calls = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Checking.",
                                                       "tool_calls": [CALL, {**CALL, "id": "call00002"}]}]
    assert trained_runs(tpl.render(calls)) == trained_runs(get_template("glm4", _NoTokenizer()).render(calls))
    # a trained user turn just before the last answer stays out of it (the answer alone is the last turn)
    trained_user = [messages[0], messages[1], {**messages[2], "loss": True}, messages[3]]
    for template in ("mistral_v3", "deepseek_v3", "yi1_5", "glm4"):
        tpl = get_template(template, tokenizer=_NoTokenizer(), loss_scope="last_assistant")
        (run,) = trained_runs(tpl.render(trained_user))
        assert "4" in run and "2" not in run, (template, run)

"""Tool calls render for training and parse back from generated text (round trip per family)."""
import pytest

from swiftlike.templates import TEMPLATES, get_template
from swiftlike.templates.toolcalls import parse_tool_calls

CALLS = [{"type": "function", "id": "call00001", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}},
         {"type": "function", "id": "call00002", "function": {"name": "get_time", "arguments": {"tz": "CET", "n": 2}}}]
WITH_TOOLS = sorted(n for n, s in TEMPLATES.items() if s.options.get("tool_format"))
END = {"hermes": "<|im_end|>", "llama3_json": "<|eot_id|>", "mistral": "</s>", "deepseek": "<｜end▁of▁sentence｜>",
       "deepseek_v3_1": "<｜end▁of▁sentence｜>", "glm4": "<|observation|>",  # (what GLM-4 writes after a call)
       "mistral_small": "</s>"}


def trained_runs(segments):
    """Adjacent trained segments joined: the text the model produces for each turn."""
    runs, previous = [], False
    for text, trained in segments:
        if trained:
            if previous:
                runs[-1] += text
            else:
                runs.append(text)
        previous = trained
    return runs


class _NoTokenizer:
    def convert_tokens_to_ids(self, token):
        return None


@pytest.mark.parametrize("name", WITH_TOOLS)
def test_round_trip(name):
    template = get_template(name, _NoTokenizer())
    calls = CALLS[:1] if name.startswith("llama3") else CALLS  # Llama-3.1 supports one call per turn
    messages = [{"role": "user", "content": "Weather and time in Zürich?"},
                {"role": "assistant", "content": "", "tool_calls": calls}]
    generated = trained_runs(template.render(messages))[-1]
    fmt = template.spec.options["tool_format"]
    generated = generated.removesuffix(END[fmt]).removesuffix("<｜tool▁calls▁end｜>")
    message = template.parse_response(generated)
    expected = [c if fmt.startswith("mistral") else {k: v for k, v in c.items() if k != "id"} for c in calls]
    assert message["tool_calls"] == expected
    assert message["content"] == ""


def test_hermes_keeps_content_and_reasoning():
    template = get_template("qwen3", _NoTokenizer())
    text = ('<think>\nneed weather\n</think>\n\nLet me check.\n<tool_call>\n{"name": "get_weather", '
            '"arguments": {"city": "Oslo"}}\n</tool_call>')
    assert template.parse_response(text) == {
        "role": "assistant", "content": "Let me check.", "reasoning": "need weather",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}


@pytest.mark.parametrize("fmt, text", [
    ("hermes", "<tool_call>\n{not json}\n</tool_call>"), ("llama3_json", "The answer is 4."),
    ("mistral", "[TOOL_CALLS] [oops"), ("deepseek", "plain answer"),
])
def test_malformed_calls_stay_content(fmt, text):
    assert parse_tool_calls(text, fmt) == (text, [])

"""Forced tool calls (OpenAI's tool_choice "required" or a named function): a randomly initialised model of each
family writes calls in its own format that the family's parser reads back, naming an offered (or the named)
function with arguments valid under its parameters schema; through the server the official `openai` client gets
them as tool_calls, streamed or not; requests that cannot be honoured are 400s naming tool_choice."""
import json

import jsonschema
import pytest
from openai import OpenAI

from swiftlike.errors import UserError
from swiftlike.infer import SamplingParams
from swiftlike.serve import BackgroundServer, ServeSettings, create_app
from swiftlike.templates import get_template
from swiftlike.templates.call_grammar import forced_call_grammar

WEATHER = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


def _engine(model_id: str, template: str | None = None, max_batch_size: int = 4):
    from swiftlike.infer.engine import TransformersEngine
    from swiftlike.models import build_miniature, load_tokenizer
    from swiftlike.registry import MODELS

    tokenizer = load_tokenizer(model_id, miniature=True)
    template = get_template(template or MODELS[model_id.lower()].template, tokenizer)
    return TransformersEngine(build_miniature(model_id).eval(), tokenizer, template, max_batch_size=max_batch_size)


def _calls(template, text: str) -> list[dict]:
    calls = template.parse_response(text).get("tool_calls") or []
    for call in calls:
        jsonschema.validate(call["function"]["arguments"], SCHEMAS[call["function"]["name"]])
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("model_id, template", [
    ("Qwen/Qwen3-0.6B", None),                                  # hermes
    ("meta-llama/Llama-3.1-8B-Instruct", None),                 # llama3_json
    ("mistralai/Mistral-7B-Instruct-v0.3", None),               # mistral, "[TOOL_CALLS] [...]"
    ("mistralai/Mistral-Nemo-Instruct-2407", None),             # mistral, "[TOOL_CALLS][...]"
    ("Qwen/Qwen3-0.6B", "mistral_small"),                       # (no Mistral-Small miniature: its format, spelled out)
    ("deepseek-ai/DeepSeek-V3", None),                          # deepseek
    ("deepseek-ai/DeepSeek-V3.1", None),                        # deepseek_v3_1
    ("THUDM/glm-4-9b-chat", None),                              # glm4
])
def test_each_format_writes_calls_its_parser_reads(model_id, template):
    with _engine(model_id, template) as engine:
        tpl = engine.template
        prompt = tpl.encode_prompt([{"role": "user", "content": "What is the weather in Paris?"}], tools=TOOLS)
        named, one, several = (SamplingParams(max_new_tokens=96, grammar=forced_call_grammar(tpl, TOOLS, choice, par))
                               for choice, par in (("get_time", True), (None, False), (None, True)))
        [[a], [b], [c]] = [engine.generate([prompt], params)[0] for params in (named, one, several)]
        assert a.finish_reason == b.finish_reason == "stop", (a.text, b.text)
        assert [call["function"]["name"] for call in _calls(tpl, a.text)] == ["get_time"]
        assert len(_calls(tpl, b.text)) == 1
        assert len(_calls(tpl, c.text)) >= 1 or c.finish_reason == "length" and "get_" in c.text
        # without the constraint the random model writes no call at all
        [[free]] = engine.generate([prompt], SamplingParams(max_new_tokens=24))
        assert not tpl.parse_response(free.text).get("tool_calls")


def test_a_template_without_a_tool_call_format_cannot_force_one():
    from swiftlike.models import load_tokenizer

    template = get_template("gemma3", load_tokenizer("Qwen/Qwen3-0.6B", miniature=True))
    with pytest.raises(UserError, match="the gemma3 template has no tool-call format"):
        forced_call_grammar(template, TOOLS, None)


def test_the_openai_client_gets_the_forced_calls():
    with _engine("Qwen/Qwen3-0.6B", max_batch_size=8) as engine, BackgroundServer(create_app(
            engine, ServeSettings(model_name="mini", max_model_len=512, max_tokens_limit=128,
                                  max_request_bytes=16384))) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        messages = [{"role": "user", "content": "Weather in Rome for three days?"}]
        named = {"type": "function", "function": {"name": "get_weather"}}
        r = client.chat.completions.create(model="mini", messages=messages, tools=TOOLS, tool_choice=named,
                                           max_tokens=96, temperature=0)
        [call] = r.choices[0].message.tool_calls
        assert call.function.name == "get_weather" and r.choices[0].finish_reason == "tool_calls"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
        chunks = list(client.chat.completions.create(model="mini", messages=messages, tools=TOOLS, tool_choice=named,
                                                     max_tokens=96, temperature=0, stream=True))
        [streamed] = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
        assert (streamed.function.name, streamed.function.arguments) == (call.function.name, call.function.arguments)
        r = client.chat.completions.create(model="mini", messages=messages, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=96, temperature=0.8, seed=1, n=3)
        for choice in r.choices:
            [call] = choice.message.tool_calls
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        for extra, error in (({"tool_choice": "required", "tools": None}, "offers no tools"),
                             ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not among"),
                             ({"tool_choice": "always"}, "may be"),
                             ({"tool_choice": "required", "response_format": {"type": "json_object"}},
                              "cannot be combined"),
                             ({"tool_choice": "required", "tools": [{"type": "function", "function": {
                                 "name": "f", "parameters": {"type": "bogus"}}}]}, "cannot be enforced")):
            kwargs = {"tools": TOOLS, **extra}
            if kwargs["tools"] is None:
                del kwargs["tools"]
            with pytest.raises(Exception) as caught:
                client.chat.completions.create(model="mini", messages=messages, max_tokens=8, **kwargs)
            assert caught.value.status_code == 400 and error in caught.value.message, caught.value.message
            assert caught.value.body["param"] == "tool_choice"


def test_vllm_backend_refuses_a_grammar():
    from swiftlike.infer.vllm import vllm_sampling

    with pytest.raises(UserError, match="needs the transformers backend"):
        vllm_sampling(SamplingParams(grammar='start: "x"'), [2])

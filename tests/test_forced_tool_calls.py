"""Forced tool calls (OpenAI's tool_choice "required" or a named function): a randomly initialised model of each
family writes calls in its own format that the family's parser reads back, naming an offered (or the named)
function with arguments valid under its parameters schema; through the server the official `openai` client gets
them as tool_calls, streamed or not; requests that cannot be honoured are 400s naming tool_choice."""
import json
from typing import Literal

import jsonschema
import pytest
from openai import OpenAI
from pydantic import Field

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


FAMILIES = [
    ("Qwen/Qwen3-0.6B", None),                                  # hermes
    ("meta-llama/Llama-3.1-8B-Instruct", None),                 # llama3_json
    ("mistralai/Mistral-7B-Instruct-v0.3", None),               # mistral, "[TOOL_CALLS] [...]"
    ("mistralai/Mistral-Nemo-Instruct-2407", None),             # mistral, "[TOOL_CALLS][...]"
    ("Qwen/Qwen3-0.6B", "mistral_small"),                       # (no Mistral-Small miniature: its format, spelled out)
    ("deepseek-ai/DeepSeek-V3", None),                          # deepseek
    ("deepseek-ai/DeepSeek-V3.1", None),                        # deepseek_v3_1
    ("THUDM/glm-4-9b-chat", None),                              # glm4
]


@pytest.mark.parametrize("model_id, template", FAMILIES)
def test_the_grammar_accepts_the_templates_own_rendering_of_calls(model_id, template):
    """What the family's template renders for an assistant turn of two calls (the way the model was trained to
    write them; Qwen3's empty think block included) is, token by token, an answer the grammar allows."""
    from swiftlike.infer.grammar import Grammars
    from swiftlike.models import load_tokenizer
    from swiftlike.registry import MODELS

    tokenizer = load_tokenizer(model_id, miniature=True)
    tpl = get_template(template or MODELS[model_id.lower()].template, tokenizer)
    calls = [{"id": f"call{i}abcd", "type": "function", "function": {"name": name, "arguments": args}}
             for i, (name, args) in enumerate((("get_time", {"zone": "CET"}), ("get_weather", {"city": "Rome",
                                                                                               "days": 3})))]
    many = tpl.spec.options["tool_format"] != "llama3_json"  # (Llama 3 writes one call a turn)
    user = [{"role": "user", "content": "Time and weather?"}]
    turn = user + [{"role": "assistant", "content": "", "tool_calls": calls if many else calls[:1]}]
    prompt = tokenizer.decode(tpl.encode_prompt(user, tools=TOOLS), skip_special_tokens=False)
    whole = tokenizer.decode(tpl.encode({"messages": turn, "tools": TOOLS})["input_ids"], skip_special_tokens=False)
    assert whole.startswith(prompt)
    answer = whole[len(prompt):]
    for stop in tpl.stop_token_ids:  # the end of turn is the stop token, not part of the constrained answer
        answer = answer.removesuffix(tokenizer.decode([stop], skip_special_tokens=False)).rstrip("\n")
    [matcher] = Grammars(tokenizer, len(tokenizer), tpl.stop_token_ids).matchers(
        SamplingParams(grammar=forced_call_grammar(tpl, TOOLS, None)), 1)
    for token in tokenizer(answer, add_special_tokens=False)["input_ids"]:
        assert matcher.consume_token(token), (answer, matcher.get_error()[:300])
    assert matcher.is_accepting(), answer


NO_THINKING = {"enable_thinking": False}  # (a random model would reason past any budget: it rarely writes </think>)
OFF = {"chat_template_kwargs": NO_THINKING}  # (the same through the server)


def _answer_prompt(tpl, content: str, tools: list) -> tuple[list[int], str | None]:
    """A prompt that asks for an answer without reasoning (Qwen3's thinking off), and what it did with a think
    block (the grammar follows it)."""
    from swiftlike.templates.call_grammar import prompt_think

    hybrid = tpl.spec.options.get("hybrid_thinking")
    prompt = tpl.encode_prompt([{"role": "user", "content": content}], tools=tools, **(NO_THINKING if hybrid else {}))
    return prompt, prompt_think(tpl.tokenizer, prompt)


@pytest.mark.slow
@pytest.mark.parametrize("model_id, template", FAMILIES)
def test_each_format_writes_calls_its_parser_reads(model_id, template):
    with _engine(model_id, template) as engine:
        tpl = engine.template
        prompt, think = _answer_prompt(tpl, "What is the weather in Paris?", TOOLS)
        named, one, several = (SamplingParams(max_new_tokens=96,
                                              grammar=forced_call_grammar(tpl, TOOLS, choice, par, think))
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
                                           max_tokens=96, temperature=0, extra_body=OFF)
        [call] = r.choices[0].message.tool_calls
        assert call.function.name == "get_weather" and r.choices[0].finish_reason == "tool_calls"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
        chunks = list(client.chat.completions.create(model="mini", messages=messages, tools=TOOLS, tool_choice=named,
                                                     max_tokens=96, temperature=0, stream=True,
                                                     extra_body=OFF))
        [streamed] = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
        assert (streamed.function.name, streamed.function.arguments) == (call.function.name, call.function.arguments)
        r = client.chat.completions.create(model="mini", messages=messages, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=96, temperature=0.8, seed=1, n=3,
                                           extra_body=OFF)
        for choice in r.choices:
            [call] = choice.message.tool_calls
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        for extra, error, param in (({"tool_choice": {}}, "may be", "tool_choice"),
                                    ({"tool_choice": False}, "may be", "tool_choice"),
                                    ({"tool_choice": {"type": "function", "function": "f"}}, "may be", "tool_choice"),
                                    ({"tools": TOOLS + TOOLS[:1]}, "another tool is already named", "tools"),
                                    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]},
                                     "must be a JSON schema object", "tools"),
                                    ({"tool_choice": "required", "tools": [{"type": "function", "function": {
                                        "name": "two words"}}]}, "cannot be forced", "tool_choice")):
            with pytest.raises(Exception) as caught:
                client.chat.completions.create(model="mini", messages=messages, max_tokens=8,
                                               **{"tools": TOOLS, **extra})
            assert caught.value.status_code == 400 and error in caught.value.message, caught.value.message
            assert caught.value.body["param"] == param and "\n" not in caught.value.message
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
            assert caught.value.body["param"] == ("tools" if "enforced" in error else "tool_choice")
            assert "\n" not in caught.value.message and "<[" not in caught.value.message


def test_parameters_with_definitions_and_references_are_forced_whole():
    """pydantic (and openai.pydantic_function_tool) put nested models in $defs, referred to from the schema's
    root: nested in a call's JSON object (hermes) or beside other tools in one array (Mistral) they still
    resolve."""
    import openai
    from pydantic import BaseModel

    class City(BaseModel):
        name: Literal["Paris", "Rome"]

    class Trip(BaseModel):
        start: City
        stops: list[City] = Field(max_length=2)

    tool = openai.pydantic_function_tool(Trip, name="plan_trip")
    assert "$defs" in tool["function"]["parameters"]
    # an $id of its own, and a reference into its properties: both resolve in the parameters' own document
    alias = {"$id": "urn:alias", "type": "object", "properties": {
        "zone": {"enum": ["UTC", "CET"]}, "same": {"$ref": "#/properties/zone"}},
        "required": ["zone", "same"], "additionalProperties": False}
    tools = [tool, {"type": "function", "function": {"name": "ns/alias", "parameters": alias}}, *TOOLS]
    for model_id in ("Qwen/Qwen3-0.6B", "mistralai/Mistral-7B-Instruct-v0.3"):
        with _engine(model_id) as engine:
            tpl = engine.template
            prompt, think = _answer_prompt(tpl, "Plan a trip.", tools)
            for name in ("plan_trip", "ns/alias"):
                grammar = forced_call_grammar(tpl, tools, name, think=think)
                [[c]] = engine.generate([prompt], SamplingParams(max_new_tokens=96, grammar=grammar))
                [call] = tpl.parse_response(c.text)["tool_calls"]
                assert call["function"]["name"] == name
                if name == "plan_trip":
                    Trip.model_validate(call["function"]["arguments"])
                else:
                    jsonschema.validate(call["function"]["arguments"], {k: v for k, v in alias.items() if k != "$id"})


QWEN3, LLAMA3 = "Qwen/Qwen3-0.6B", "meta-llama/Llama-3.1-8B-Instruct"
REASONED = ['Rome is in CET, so...\n</think>\n\n{"zone":"CET"}', '</think>\n\n{"zone":"CET"}']


@pytest.mark.parametrize("tokenizer_id, template_name, kwargs, answers, refused", [
    (QWEN3, "qwen3_thinking_2507", {}, REASONED, ['{"zone":"CET"}']),  # (the JSON is reasoning until </think>)
    (LLAMA3, "qwen3_thinking_2507", {}, REASONED, ['{"zone":"CET"}']),  # ("</think>" is text there, not a token)
    (QWEN3, "qwen3", {}, ['<think>\nCET, I think.\n</think>\n\n{"zone":"CET"}', '<think>\n\n</think>\n\n{"zone":"CET"}',
                          '{"zone":"CET"}'], ['<think>\nCET']),       # (an open think block is no answer)
    (QWEN3, "qwen3", {"enable_thinking": False}, ['{"zone":"CET"}'], ['<think>\n\n</think>\n\n{"zone":"CET"}']),
    ("deepseek-ai/DeepSeek-V3.1", "deepseek_v3_1", {"thinking": True}, ['Zone: CET.</think>{"zone":"CET"}'],
     ['Zone: CET.</think>\n\n{"zone":"CET"}']),                      # (its template writes no blank line there)
])
def test_a_thinking_model_reasons_before_its_constrained_answer(tokenizer_id, template_name, kwargs, answers, refused):
    """JSON output after the reasoning the prompt allows: a prompt that opened a think block (Qwen3-Thinking-2507)
    is followed by free reasoning, "</think>", a blank line, then the JSON; Qwen3 with thinking on may first write
    a think block of free reasoning (or none, as its template renders answers both ways); with thinking off (its
    prompt holds the closed, empty block) the answer is the JSON alone."""
    from swiftlike.infer.grammar import Grammars
    from swiftlike.models import load_tokenizer
    from swiftlike.templates.call_grammar import json_grammar, needs_grammar, prompt_think

    tokenizer = load_tokenizer(tokenizer_id, miniature=True)
    template = get_template(template_name, tokenizer)
    think = prompt_think(tokenizer, template.encode_prompt([{"role": "user", "content": "Zone?"}], **kwargs))
    params = (SamplingParams(grammar=json_grammar(template, json.dumps(TIME), think)) if needs_grammar(template, think)
              else SamplingParams(json_schema=json.dumps(TIME)))
    grammars = Grammars(tokenizer, len(tokenizer), template.stop_token_ids)
    for text, allowed in [(a, True) for a in answers] + [(r, False) for r in refused]:
        [matcher] = grammars.matchers(params, 1)
        took = all(matcher.consume_token(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"])
        assert (took and matcher.is_accepting()) is allowed, (text, matcher.get_error()[:200])


def test_a_thinking_template_reasons_then_answers_as_content():
    """Qwen3-Thinking-2507's prompt opens <think>: a constrained answer is free reasoning, then the JSON or the
    forced calls as content and tool_calls (the random model is nudged to close its reasoning soon: logit_bias)."""
    with _engine("Qwen/Qwen3-4B-Thinking-2507") as engine, BackgroundServer(create_app(
            engine, ServeSettings(model_name="m", max_model_len=512, max_tokens_limit=128,
                                  max_request_bytes=16384))) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        messages = [{"role": "user", "content": "What time is it?"}]
        close = {str(engine.tokenizer.convert_tokens_to_ids("</think>")): 12}
        r = client.chat.completions.create(model="m", messages=messages, max_tokens=60, n=4, seed=3, logit_bias=close,
                                           response_format={"type": "json_schema",
                                                            "json_schema": {"name": "time", "schema": TIME}})
        for choice in r.choices:
            assert choice.finish_reason == "stop", choice
            jsonschema.validate(json.loads(choice.message.content), TIME)
        assert any(getattr(c.message, "reasoning_content", None) for c in r.choices)  # (reasoned before answering)
        r = client.chat.completions.create(model="m", messages=messages, max_tokens=80, tools=TOOLS, seed=3,
                                           logit_bias=close,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
        [call] = r.choices[0].message.tool_calls
        assert call.function.name == "get_time" and not r.choices[0].message.content
        jsonschema.validate(json.loads(call.function.arguments), TIME)

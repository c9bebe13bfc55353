"""JSON output (OpenAI's response_format, `wb infer --json_schema`): a randomly initialised model, which left
alone writes gibberish, answers JSON of the schema under the constraint, greedy or sampled, n completions side by
side with free ones; a budget that ends first leaves a prefix of such JSON; a bad schema is the caller's error.
Through the server the official `openai` client parses the answer into a pydantic model (a reader not ours)."""
import json
from typing import Literal

import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from swiftlike.cli.main import main
from swiftlike.infer import SamplingParams
from swiftlike.infer.params import SchemaError
from swiftlike.serve import BackgroundServer, ServeSettings, create_app

MODEL = "Qwen/Qwen3-0.6B"
PROMPTS = [[100, 200, 300], [5, 6, 7, 8], [42] * 9]


class Verdict(BaseModel):
    ok: bool
    colour: Literal["red", "green", "blue"]
    score: int = Field(ge=0, le=50)
    tags: list[Literal["a", "b"]] = Field(max_length=2)


SCHEMA = json.dumps({**Verdict.model_json_schema(), "additionalProperties": False})


@pytest.fixture(scope="module")
def engine():
    from swiftlike.infer.engine import TransformersEngine
    from swiftlike.models import build_miniature, load_tokenizer
    from swiftlike.templates import get_template

    tokenizer = load_tokenizer(MODEL, miniature=True)
    with TransformersEngine(build_miniature(MODEL).eval(), tokenizer, get_template("qwen3", tokenizer),
                            max_batch_size=8) as e:
        yield e


def test_every_answer_is_json_of_the_schema_greedy_or_sampled(engine):
    constrained = [engine.submit(p, SamplingParams(max_new_tokens=48, json_schema=SCHEMA, n=3, temperature=t,
                                                   seed=s)) for s, (p, t) in enumerate(zip(PROMPTS, (0, 1.0, 0.7)))]
    free = engine.submit(PROMPTS[0], SamplingParams(max_new_tokens=12))  # shares the batch, unconstrained
    for request in constrained:
        for c in request.result(timeout=120):
            assert c.finish_reason == "stop", c.text
            Verdict.model_validate_json(c.text)  # raises unless it is JSON of the schema
            assert c.text == json.dumps(json.loads(c.text), separators=(",", ":"), ensure_ascii=False)  # compact
    [alone] = free.result(timeout=60)
    assert alone.finish_reason == "length" and not alone.text.startswith("{")  # gibberish without the constraint


def test_a_budget_that_ends_first_leaves_a_prefix_of_the_json(engine):
    [[whole]] = engine.generate([PROMPTS[1]], SamplingParams(max_new_tokens=48, json_schema=SCHEMA))
    [[cut]] = engine.generate([PROMPTS[1]], SamplingParams(max_new_tokens=4, json_schema=SCHEMA))
    assert cut.finish_reason == "length" and len(cut.token_ids) == 4 and whole.text.startswith(cut.text)
    [[anything]] = engine.generate([PROMPTS[2]], SamplingParams(max_new_tokens=3, json_schema='{"type": "object"}'))
    assert anything.text.startswith("{")


def test_a_grammar_failure_fails_its_own_request_only(engine, monkeypatch):
    import swiftlike.infer.engine as engine_module

    def refuse(matcher, token):
        raise RuntimeError(f"the grammar refused token {token}")

    monkeypatch.setattr(engine_module, "follow", refuse)
    constrained = engine.submit(PROMPTS[0], SamplingParams(max_new_tokens=8, json_schema=SCHEMA))
    free = engine.submit(PROMPTS[1], SamplingParams(max_new_tokens=8))
    with pytest.raises(RuntimeError, match="the grammar refused token"):
        constrained.result(timeout=60)
    [alone] = free.result(timeout=60)
    assert alone.finish_reason == "length" and len(alone.token_ids) == 8


def test_a_token_of_probability_zero_is_never_drawn():
    import torch

    from swiftlike.infer.sampling import draw

    probs = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 1.0, 0.0, 0.0]])
    assert draw(probs, torch.zeros(2, 1)).tolist() == [2, 1]
    assert draw(probs, torch.full((2, 1), 0.999999)).tolist() == [3, 1]


@pytest.mark.parametrize("schema, message", [
    ('{"type": "bogus"}', "the JSON schema cannot be enforced: .*bogus"),
    ('{"type": ', "the JSON schema is not valid JSON"),
    ('["a"]', "a JSON schema is a JSON object, got list"),
])
def test_a_bad_schema_is_refused_before_anything_runs(engine, schema, message):
    with pytest.raises(SchemaError, match=message):
        engine.submit(PROMPTS[0], SamplingParams(json_schema=schema))
    assert engine.stats() == {"running": 0, "waiting": 0}


def test_the_openai_client_parses_the_answer_into_its_model(engine):
    settings = ServeSettings(model_name="mini", max_model_len=256, max_tokens_limit=64, max_request_bytes=8192)
    with BackgroundServer(create_app(engine, settings)) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        messages = [{"role": "user", "content": "Judge this."}]
        off = {"chat_template_kwargs": {"enable_thinking": False}}  # (a random model would reason past any budget)
        parsed = client.chat.completions.parse(model="mini", messages=messages, response_format=Verdict,
                                               max_tokens=48, temperature=0, extra_body=off)
        assert isinstance(parsed.choices[0].message.parsed, Verdict)
        chunks = list(client.chat.completions.create(
            model="mini", messages=messages, max_tokens=48, temperature=0, stream=True, extra_body=off,
            response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": json.loads(SCHEMA)}}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == parsed.choices[0].message.content
        obj = client.chat.completions.create(model="mini", messages=messages, max_tokens=8, extra_body=off,
                                             response_format={"type": "json_object"})
        assert obj.choices[0].message.content.startswith("{")
        for fmt, error in (({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}},
                            "cannot be enforced"),
                           ({"type": "json_schema", "json_schema": {"schema": {}}}, "must be"),
                           ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"x-guidance": 5}}},
                            "x-guidance must be an object"),              # (in the grammar after the reasoning)
                           ({"type": "yaml"}, "is not one of")):
            with pytest.raises(Exception) as caught:
                client.chat.completions.create(model="mini", messages=messages, response_format=fmt)
            assert caught.value.status_code == 400 and error in caught.value.message
            assert caught.value.body["param"] == "response_format"


def test_wb_infer_json_schema_from_a_file_or_inline(tmp_path, capsys):
    path = tmp_path / "verdict.json"
    path.write_text(SCHEMA, encoding="utf-8")
    argv = ["infer", "--model", MODEL, "--miniature", "--query", "Judge this.", "--max_new_tokens", "48",
            "--enable_thinking", "false"]  # (a random model would reason past any budget)
    assert main([*argv, "--json_schema", str(path)]) == 0
    Verdict.model_validate_json(capsys.readouterr().out.strip())
    assert main([*argv, "--json_schema", SCHEMA]) == 0
    Verdict.model_validate_json(capsys.readouterr().out.strip())
    for value, message in ((str(tmp_path / "missing.json"), "neither inline JSON (an object) nor a file"),
                           ('{"type": "bogus"}', "the JSON schema cannot be enforced"),
                           ('{"type": "string", "pattern": "(("}', "regex parse error: error: unclosed group")):
        assert main([*argv, "--json_schema", value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    path.write_text("{oops", encoding="utf-8")
    assert main([*argv, "--json_schema", str(path)]) == 2
    assert f"--json_schema {path}: not valid JSON" in capsys.readouterr().err


def test_vllm_gets_its_own_structured_outputs_and_a_bad_schema_is_refused_at_submit(monkeypatch):
    import sys
    import types

    from swiftlike.infer.vllm import vllm_sampling

    class Recorder:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    vllm, params = types.ModuleType("vllm"), types.ModuleType("vllm.sampling_params")
    vllm.SamplingParams = params.StructuredOutputsParams = Recorder
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", params)
    constraint = vllm_sampling(SamplingParams(json_schema=SCHEMA), [2]).kwargs["structured_outputs"]
    assert constraint.kwargs == {"json": json.loads(SCHEMA)}
    assert "structured_outputs" not in vllm_sampling(SamplingParams(), [2]).kwargs
    with pytest.raises(SchemaError, match="needs --infer_backend transformers"):
        vllm_sampling(SamplingParams(grammar='start: "x"'), [2])
    from swiftlike.infer.vllm import VLLMEngine

    engine = VLLMEngine.__new__(VLLMEngine)  # (its submit checks before anything reaches vLLM)
    engine.default_model = "base"
    monkeypatch.setattr(VLLMEngine, "model_names", ["base"])
    with pytest.raises(SchemaError, match="the JSON schema cannot be enforced: Invalid type: bogus"):
        engine.submit([1, 2], SamplingParams(json_schema='{"type": "bogus"}'))


def test_wb_infer_json_schema_follows_the_reasoning_its_prompts_allow():
    """`wb infer --json_schema`: a thinking template's JSON comes after its reasoning (the grammar of
    templates/call_grammar.py, also for Qwen3 with thinking on), the plain schema where the prompt closed the think
    block; vLLM gets the plain schema, and a prompt that opens a think block is refused there in one line."""
    from swiftlike.errors import UserError
    from swiftlike.infer.params import SchemaError
    from swiftlike.models import load_tokenizer
    from swiftlike.pipelines.infer import after_reasoning
    from swiftlike.templates import get_template

    tokenizer = load_tokenizer(MODEL, miniature=True)
    close = f"<[{tokenizer.convert_tokens_to_ids('</think>')}]>"
    params = SamplingParams(json_schema=SCHEMA)
    thinking, hybrid = get_template("qwen3_thinking_2507", tokenizer), get_template("qwen3", tokenizer)
    for template, enable in ((thinking, None), (hybrid, None), (hybrid, True)):
        out = after_reasoning(params, template, enable)
        assert out.json_schema is None and close in out.grammar and out.validate() == out
    assert after_reasoning(params, hybrid, False) is params
    assert after_reasoning(params, hybrid, None, vllm=True) is params
    with pytest.raises(UserError, match="prompt opens a think block.*use --infer_backend transformers"):
        after_reasoning(params, thinking, None, vllm=True)
    with pytest.raises(SchemaError, match="the JSON schema cannot be enforced"):
        after_reasoning(SamplingParams(json_schema='{"type": "bogus"}'), thinking, None)
    for schema in ('{"x-guidance": 5}', '{"x-guidance": []}'):  # (refused alike with or without the reasoning)
        with pytest.raises(SchemaError, match="x-guidance must be an object"):
            SamplingParams(json_schema=schema).validate()
    assert after_reasoning(SamplingParams(json_schema='{"x-guidance": null}'), thinking, None).grammar

"""`wb deploy`: the OpenAI-compatible server, driven by the official `openai` client.

The fast tests run the HTTP layer over a scripted engine (same interface as swiftlike.infer's engine, real
tokenizer and template) to pin down request validation, error bodies, streaming, tool calls, auth, limits and
cancellation; the slow ones run `wb deploy` and the real engine end to end.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import re
import threading
import time
from pathlib import Path

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from swiftlike.errors import UserError
from swiftlike.infer import Delta, SamplingParams
from swiftlike.serve import BackgroundServer, ServeSettings, create_app
from swiftlike.serve.stream import ChoiceStream, without_tool_parser
from swiftlike.templates import get_template

QWEN3_TOKENIZER = Path(__file__).parents[1] / "swiftlike" / "assets" / "tokenizers" / "qwen3"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


class Reply:
    def __init__(self, status: int, data: bytes):
        self.status_code, self.text = status, data.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.text)


def _http(url: str, method: str, path: str, body=None, headers=None) -> Reply:
    """A raw request to the server at `url` (the openai client cannot send malformed JSON); `body`: bytes, an
    object, or an iterator of bytes (sent chunked, without Content-Length)."""
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    if body is not None and not isinstance(body, bytes) and not hasattr(body, "__next__"):
        body = json.dumps(body).encode()
    conn.request(method, path, body=body, headers=headers or {}, encode_chunked=hasattr(body, "__next__"))
    response = conn.getresponse()
    reply = Reply(response.status, response.read())
    conn.close()
    return reply


# -- a scripted engine ------------------------------------------------------------------------------
class FakeRequest:
    """Deltas produced on a thread, token by token, readable sync or async; cancel() stops it."""

    def __init__(self, engine, prompt_ids, params, adapter):
        self.engine, self.params = engine, params
        self.deltas, self.done, self.cancelled = [], False, False
        self.cond = threading.Condition()
        self.waiters = []  # (loop, asyncio.Event) of async readers
        text = engine.reply(engine.tokenizer.decode(prompt_ids), adapter)
        self.thread = threading.Thread(target=self._run, args=(text,), daemon=True)
        self.thread.start()

    def _push(self, delta):
        with self.cond:
            if delta is not None:
                self.deltas.append(delta)
            else:
                self.done = True
            self.cond.notify_all()
            for loop, event in self.waiters:
                loop.call_soon_threadsafe(event.set)

    def _run(self, text):
        tok, p = self.engine.tokenizer, self.params
        for stop in p.stop:
            text = text.split(stop)[0] if stop in text else text
        ids = tok.encode(text, add_special_tokens=False)
        finish = "length" if len(ids) > p.max_new_tokens else "stop"
        ids = ids[:p.max_new_tokens]
        for i in range(p.n):
            shown = ""
            for k, t in enumerate(ids):
                if self.cancelled:
                    self.engine.cancelled += 1
                    return self._push(None)
                time.sleep(self.engine.token_delay)
                now = tok.decode(ids[:k + 1])
                lp = [{"token_id": t, "token": tok.decode([t]), "logprob": -0.5,
                       "top": [{"token_id": t, "token": tok.decode([t]), "logprob": -0.5}][:p.top_logprobs]}]
                last = k == len(ids) - 1
                self._push(Delta(i, [t], now[len(shown):], lp if p.logprobs else None, finish if last else None))
                shown = now
        self._push(None)

    def __iter__(self):
        i = 0
        while True:
            with self.cond:
                self.cond.wait_for(lambda: len(self.deltas) > i or self.done)
                batch, done = self.deltas[i:], self.done
            i += len(batch)
            yield from batch
            if done and i == len(self.deltas):
                return

    async def __aiter__(self):
        event, i = asyncio.Event(), 0
        with self.cond:
            self.waiters.append((asyncio.get_running_loop(), event))
        while True:
            with self.cond:
                batch, done = self.deltas[i:], self.done
                event.clear()
            i += len(batch)
            for d in batch:
                yield d
            if done and i == len(self.deltas):
                return
            if not batch:
                await event.wait()

    def cancel(self):
        self.cancelled = True


class FakeEngine:
    """Answers "You said: <last user message>"; the `shout` adapter in capitals; a tool call when a weather
    question comes with tools; a think block when asked to think; a verdict on a tool result."""

    name = "fake"

    def __init__(self, template="qwen3", token_delay=0.0):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(QWEN3_TOKENIZER)
        self.template = get_template(template, self.tokenizer)
        self.model_names = ["base", "shout"]
        self.token_delay, self.cancelled, self.prompts = token_delay, 0, []

    def reply(self, prompt: str, adapter) -> str:
        self.prompts.append(prompt)
        turns = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, re.S)
        last = turns[-1] if turns else ""
        if "<tool_response>" in last:
            text = "It is sunny in Paris."
        elif "weather" in last and "<tools>" in prompt:
            text = "Let me check.\n" + TOOL_CALL
        elif "think" in last:
            text = "<think>\nThe user wants thought.\n</think>\n\nThought done."
        else:
            text = f"You said: {last}"
        return text.upper() if adapter == "shout" else text

    def submit(self, prompt_ids, params: SamplingParams, adapter=None, images=None):
        self.params = params
        return FakeRequest(self, prompt_ids, params, adapter)

    def close(self):
        pass


def _server(engine, **settings):
    defaults = {"model_name": "mini", "max_model_len": 256, "max_tokens_limit": 64, "max_request_bytes": 8192}
    return BackgroundServer(create_app(engine, ServeSettings(**{**defaults, **settings})))


@pytest.fixture(scope="module")
def fake():
    engine = FakeEngine()
    with _server(engine) as server:
        yield engine, server, OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def _chat(client, text, **kw):
    return client.chat.completions.create(model=kw.pop("model", "mini"),
                                          messages=[{"role": "user", "content": text}], **kw)


# -- the HTTP layer over the scripted engine ---------------------------------------------------------
def test_models_health_and_a_chat(fake):
    engine, server, client = fake
    assert [m.id for m in client.models.list().data] == ["mini", "shout"]
    assert _http(server.url, "GET", "/health").json() == {"status": "ok"}
    r = _chat(client, "hello there")
    assert r.choices[0].message.content == "You said: hello there"
    assert r.choices[0].finish_reason == "stop" and r.model == "mini" and r.object == "chat.completion"
    prompt = engine.tokenizer.encode(engine.prompts[-1])
    assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens == len(
        engine.tokenizer.encode("You said: hello there"))
    assert engine.prompts[-1].endswith("<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n")


def test_adapter_chosen_by_model_name(fake):
    _, _, client = fake
    assert _chat(client, "hi", model="shout").choices[0].message.content == "YOU SAID: HI"
    with pytest.raises(openai.NotFoundError) as e:
        _chat(client, "hi", model="nobody")
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"


def test_streaming_adds_up_to_the_whole_answer(fake):
    _, _, client = fake
    for text in ("a streamed answer", "please think"):
        whole = _chat(client, text).choices[0].message
        chunks = list(_chat(client, text, stream=True, stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant"
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
        assert content == whole.content and reasoning == (getattr(whole, "reasoning_content", None) or "")
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert whole.content == "Thought done." and whole.reasoning_content == "The user wants thought."


def test_tools_round_trip(fake):
    engine, _, client = fake
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model="mini", messages=messages, tools=[WEATHER_TOOL])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert '"name": "get_weather"' in engine.prompts[-1]                  # the tool was rendered for the model
    streamed = list(client.chat.completions.create(model="mini", messages=messages, tools=[WEATHER_TOOL],
                                                   stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in streamed)
    calls = [tc for c in streamed for tc in c.choices[0].delta.tool_calls or []]
    assert content == "Let me check." and "<tool_call>" not in content
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [("get_weather",
                                                                                        {"city": "Paris"})]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'}]
    again = client.chat.completions.create(model="mini", messages=messages, tools=[WEATHER_TOOL])
    assert again.choices[0].message.content == "It is sunny in Paris."
    assert '<tool_response>\n{"sky": "sunny"}\n</tool_response>' in engine.prompts[-1]
    # without tools the same words are the answer's content: nothing is parsed as a call
    plain = _chat(client, "the weather?", tool_choice="none", tools=[WEATHER_TOOL])
    assert plain.choices[0].message.tool_calls is None


def test_sampling_fields_reach_the_engine(fake):
    _, _, client = fake
    r = _chat(client, "count with me", n=2, stop=["with"], max_tokens=30, logprobs=True, top_logprobs=1, seed=3)
    assert [c.message.content for c in r.choices] == ["You said: count ", "You said: count "]
    lp = r.choices[0].logprobs.content
    assert [t.token for t in lp] == [t.token for t in r.choices[1].logprobs.content] and lp[0].logprob == -0.5
    assert len(lp[0].top_logprobs) == 1 and lp[0].bytes == list(lp[0].token.encode())
    chunks = list(_chat(client, "two at once", n=2, stream=True, max_tokens=30))
    for i in range(2):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == i]
        assert "".join(c.delta.content or "" for c in mine) == "You said: two at once"
        assert [c.finish_reason for c in mine if c.finish_reason] == ["stop"]
    cut = _chat(client, "a long answer that will not fit", max_completion_tokens=3)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3
    engine, _, _ = fake
    _chat(client, "penalised", presence_penalty=0.5, frequency_penalty=-1, logit_bias={"77": -100, "5": 2.5})
    p = engine.params
    assert (p.presence_penalty, p.frequency_penalty, p.logit_bias) == (0.5, -1.0, ((77, -100.0), (5, 2.5)))


def test_completions_of_raw_prompts(fake):
    _, _, client = fake
    raw = "<|im_start|>user\nraw<|im_end|>\n<|im_start|>assistant\n"
    r = client.completions.create(model="mini", prompt=[raw, raw.replace("raw", "two")], n=2, max_tokens=20,
                                  logprobs=1)
    assert [c.text for c in r.choices] == ["You said: raw"] * 2 + ["You said: two"] * 2
    assert [c.index for c in r.choices] == [0, 1, 2, 3] and r.choices[0].logprobs.text_offset[0] == 0
    streamed = list(client.completions.create(model="shout", prompt=raw, max_tokens=20, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == "YOU SAID: RAW"


def _error(response: Reply, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    return body


@pytest.mark.parametrize("body, param", [
    ({"model": "mini", "messages": []}, "messages"),
    ({"model": "mini"}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "mini", "messages": [{"role": "robot", "content": "x"}]}, "messages"),
    ({"model": "mini", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "temperature": -1}, "temperature"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "n": "2"}, "n"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 65}, "max_tokens"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 64, "stop": [""]}, "stop"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "presence_penalty": 2.5},
     "presence_penalty"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"a": 1}}, "logit_bias"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 101}}, "logit_bias"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 1, "05": 2}}, "logit_bias"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"9" * 5000: 1}}, "logit_bias"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "echo": True}, "echo"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x " * 300}]}, "messages"),   # > the context
    ({"model": "mini", "messages": [{"role": "user", "content": "x " * 200}], "max_tokens": 60}, "max_tokens"),
    ({"model": "mini", "messages": [{"role": "user", "content": "x"}], "temperature": 10 ** 400}, "temperature"),
])
def test_bad_requests_are_4xx_with_an_openai_error_body(fake, body, param):
    _, server, _ = fake
    assert _error(_http(server.url, "POST", "/v1/chat/completions", body), 400)["param"] == param


def test_message_errors_carry_the_documented_code(fake):
    _, server, _ = fake
    for messages in ([], [{"role": "robot", "content": "x"}]):  # (the empty list once had no code)
        error = _error(_http(server.url, "POST", "/v1/chat/completions", {"model": "mini", "messages": messages}), 400)
        assert error["code"] == "invalid_messages", error


def test_malformed_oversize_and_unknown_routes(fake):
    _, server, client = fake
    url, chat = server.url, "/v1/chat/completions"
    for bad in (b'{"model": "mini", "messages": [', b"[1, 2]", b"\xff\xfe", b'{"n": ' + b"9" * 5000 + b"}",
                b"[" * 3000 + b"]" * 3000):  # the last two: Python's own limits, not a 500
        assert _error(_http(url, "POST", chat, bad), 400)["code"] == "invalid_json"
    many = {"model": "mini", "prompt": ["x"] * 100, "n": 3}
    assert "at most 256 completions" in _error(_http(url, "POST", "/v1/completions", many), 400)["message"]
    big = {"model": "mini", "messages": [{"role": "user", "content": "x" * 10_000}]}
    assert _error(_http(url, "POST", chat, big), 413)["code"] == "request_too_large"
    with pytest.raises(openai.APIStatusError) as e:                    # the client sees it as such, no retry
        _chat(client, "x" * 10_000)
    assert e.value.status_code == 413

    def chunked():                                                     # no Content-Length: counted as it comes
        for _ in range(10):
            yield b" " * 1000
    assert _error(_http(url, "POST", chat, chunked()), 413)["code"] == "request_too_large"
    _error(_http(url, "GET", "/v1/nothing"), 404)
    _error(_http(url, "GET", chat), 405)
    bad = {"model": "mini", "prompt": [1, 10 ** 9]}
    assert _error(_http(url, "POST", "/v1/completions", bad), 400)["param"] == "prompt"


def test_template_refusals_are_400():
    engine = FakeEngine(template="mistral_v3")                        # roles must alternate
    with _server(engine) as server:
        body = {"model": "mini", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
        error = _error(_http(server.url, "POST", "/v1/chat/completions", body), 400)
        assert "alternate" in error["message"] and error["param"] == "messages"


def test_api_key():
    engine = FakeEngine()
    with _server(engine, api_key="sekret") as server:
        assert _http(server.url, "GET", "/health").status_code == 200      # open: load balancers probe it
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            assert _error(_http(server.url, "GET", "/v1/models", headers=headers), 401)["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            _chat(OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0), "hi")
        right = OpenAI(base_url=server.url + "/v1", api_key="sekret", max_retries=0)
        assert _chat(right, "hi").choices[0].message.content == "You said: hi"


def test_a_client_that_goes_away_cancels_its_request():
    engine = FakeEngine(token_delay=0.05)
    with _server(engine) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        stream = _chat(client, "a long answer " * 20, stream=True, max_tokens=60)
        next(iter(stream))
        stream.close()                                                 # mid-stream
        slow = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=0.3)
        with pytest.raises(openai.APITimeoutError):                    # waiting for a whole answer
            _chat(slow, "another long answer " * 20, max_tokens=60)
        deadline = time.monotonic() + 10
        while engine.cancelled < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.cancelled == 2


def test_concurrent_requests_are_all_answered(fake):
    _, server, client = fake

    async def many():
        aclient = AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        rs = await asyncio.gather(*[aclient.chat.completions.create(
            model="mini", messages=[{"role": "user", "content": f"number {i}"}], stream=bool(i % 2))
            for i in range(32)])
        out = []
        for r in rs:
            if isinstance(r, openai.AsyncStream):
                out.append("".join([c.choices[0].delta.content or "" async for c in r]))
            else:
                out.append(r.choices[0].message.content)
        return out

    assert asyncio.run(many()) == [f"You said: number {i}" for i in range(32)]


# -- streaming reads the whole text as the parser does -----------------------------------------------
@pytest.mark.parametrize("text, in_think, tools", [
    ("plain answer", False, False),
    ("<think>\nsome thought\n\n</think>\n\nthe answer\n", False, False),
    ("  <think>x</think>y", False, False),
    ("thought only</think>\n\nanswer", True, False),
    ("cut short inside the thought", True, False),
    ("<think>\nunfinished <thi", False, False),
    ("words then\n" + TOOL_CALL + "\n" + TOOL_CALL, False, True),
    ("<think>\nhmm\n</think>\n\n" + TOOL_CALL, False, True),
    ("broken <tool_call>\n{not json}\n</tool_call>", False, True),
    ("no call, a < sign and <tool at the end <tool_", False, True),
    # leading whitespace the tool-call parser strips was streamed (and so was not a prefix of the message)
    ("\n\nLet me check.", False, True), ("  Sure: " + TOOL_CALL, False, True),
    ("<think>x</think>\n\n  answer", False, True), ("\n\nplain, no tools", False, False),
])
def test_streamed_pieces_add_up_to_the_parsed_answer(qwen3_tokenizer, text, in_think, tools):
    template = get_template("qwen3", qwen3_tokenizer)
    parser = template if tools else without_tool_parser(template)      # calls are parsed when tools were offered
    expected = parser.parse_response(text, in_think)
    for step in (1, 3, 7):
        stream = ChoiceStream(parser, "hermes" if tools else None, in_think)
        reasoning = content = ""
        for i in range(0, len(text), step):
            r, c = stream.feed(text[i:i + step])
            reasoning, content = reasoning + r, content + c
            assert "<think>" not in content and "</think>" not in content and "<tool_call>" not in content
        r, c, calls = stream.finish()
        assert (reasoning + r, content + c) == (expected.get("reasoning", ""), expected["content"])
        assert calls == expected.get("tool_calls", [])


def test_logprob_bytes_rebuild_the_text_when_a_token_holds_part_of_a_character(qwen3_tokenizer):
    """Byte-level BPE splits 𝔘 into pieces that decode alone to U+FFFD: their `bytes` are the real ones (they were
    U+FFFD's, so the bytes no longer added up to the text), the text OpenAI gives such a piece ("bytes:\\x..."),
    and legacy text offsets count characters."""
    from swiftlike.infer.text import token_piece
    from swiftlike.serve.protocol import chat_logprobs, completion_logprobs

    text = "a 𝔘 🙂 你好<|im_end|>"
    ids = qwen3_tokenizer.encode(text, add_special_tokens=False)
    entries = [{"token_id": i, "logprob": -1.0, "top": []} for i in ids]
    for entry in entries:
        piece, raw = token_piece(qwen3_tokenizer, entry["token_id"])
        entry.update(token=piece, bytes=list(raw))
    content = chat_logprobs(entries)["content"]
    assert b"".join(bytes(c["bytes"]) for c in content).decode("utf-8") == text
    assert [c["token"] for c in content][1:4] == ["bytes:\\x20\\xf0\\x9d", "bytes:\\x94", "bytes:\\x98"]
    assert completion_logprobs(entries)["text_offset"] == [0, 1, 2, 2, 3, 5, 6, 8]  # (the 2nd-4th tokens: 𝔘)
    entries[0]["logprob"], entries[1]["logprob"] = float("nan"), float("-inf")  # (JSON has neither: once a 500)
    assert [c["logprob"] for c in chat_logprobs(entries)["content"][:3]] == [-9999.0, -9999.0, -1.0]
    assert completion_logprobs(entries)["token_logprobs"][:2] == [-9999.0, -9999.0]


@pytest.mark.parametrize("template_name, kwargs, think", [("qwq", {}, "open"), ("qwen3", {}, None),
                                                          ("qwen3", {"enable_thinking": False}, "closed")])
def test_a_think_tag_in_the_users_text_does_not_open_the_answers_reasoning(qwen3_tokenizer, template_name, kwargs,
                                                                           think):
    """Only a template that pre-fills <think> at the end of the generation prompt starts the answer in reasoning
    (a user asking about the tag once made the whole answer reasoning_content, content empty), and only one that
    pre-fills a closed think block (Qwen3 with thinking off) has an answer without reasoning."""
    from swiftlike.templates.call_grammar import prompt_think

    template = get_template(template_name, qwen3_tokenizer)
    for text in ("hi", "What does the tag <think> do?", "ends with <think>", "ends with </think>"):
        prompt = template.encode_prompt([{"role": "user", "content": text}], **kwargs)
        assert prompt_think(qwen3_tokenizer, prompt) == think, text


# -- `wb deploy` end to end: the real engine, LoRA checkpoints, the CLI ----------------------------------
def test_an_adapter_for_another_base_is_refused_at_start_up(tmp_path, capsys):
    from swiftlike.cli.main import main

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen3-1.7B"}))
    (ckpt / "args.json").write_text(json.dumps({"model": "Qwen/Qwen3-1.7B", "miniature": True, "task": "sft"}))
    assert main(["deploy", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--adapters", f"other={ckpt}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "adapter 'other'" in err and "trained on Qwen/Qwen3-1.7B (miniature)" in err
    assert main(["deploy", "--model", "Qwen/Qwen3-1.7B", "--adapters", f"other={ckpt}"]) == 2   # not a miniature
    assert "not on the served base Qwen/Qwen3-1.7B;" in capsys.readouterr().err
    peft_only = tmp_path / "peft"
    peft_only.mkdir()
    (peft_only / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "meta-llama/Llama-3.2-1B"}))
    assert main(["deploy", "--model", "Qwen/Qwen3-0.6B", "--adapters", str(peft_only)]) == 2
    assert "adapter 'peft'" in capsys.readouterr().err
    assert main(["deploy", "--model", "Qwen/Qwen3-0.6B", "--adapters", f"x={tmp_path}"]) == 2   # no adapter there
    assert "no adapter_config.json" in capsys.readouterr().err


def test_vllm_backend_without_vllm_is_one_line(capsys):
    import importlib.util

    from swiftlike.cli.main import main

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")

    assert main(["deploy", "--model", "Qwen/Qwen3-0.6B", "--infer_backend", "vllm"]) == 2
    assert "needs vLLM" in capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two LoRA checkpoints of one miniature base, as `wb sft` writes them; their adapters are then set to
    random values far from zero, so each model name visibly answers differently."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    import swiftlike as wb

    root = tmp_path_factory.mktemp("deploy")
    run = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], lora=True,
                 max_steps=1, output_dir=str(root / "run"))
    paths = {}
    for seed, name in enumerate(("a", "b")):
        path = root / name
        shutil.copytree(run.checkpoint, path)
        weights = load_file(path / "adapter_model.safetensors")
        g = torch.Generator().manual_seed(seed)
        for key, w in weights.items():
            if "lora_B" in key:
                weights[key] = torch.randn(w.shape, generator=g) * 0.3
        save_file(weights, path / "adapter_model.safetensors")
        paths[name] = str(path)
    return paths


def _start(args: list[str]):
    """`wb deploy ARGS --port 0` in a subprocess; its URL once /health answers."""
    import os
    import subprocess
    import sys
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "swiftlike.cli.main", "deploy", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "WB_API_KEY": ""})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        found = re.search(r" on (http://[\d.]+:\d+)/v1", line)
        if found:
            break
    else:
        raise AssertionError("wb deploy did not start:\n" + "".join(lines))
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    url = found.group(1)
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/health", timeout=5)
            return proc, url, lines
        except OSError:
            time.sleep(0.05)
    raise AssertionError("wb deploy does not answer /health:\n" + "".join(lines))


@pytest.fixture(scope="module")
def deployed(checkpoints):
    # fp32, as _local_engine: its answers are compared exactly (bf16 on a GPU rounds differently per batch size)
    proc, url, lines = _start(["--adapters", f"a={checkpoints['a']}", f"b={checkpoints['b']}", "--api_key", "k3y",
                               "--torch_dtype", "float32",
                               "--max_batch_size", "8", "--max_tokens_limit", "64", "--max_request_bytes", "65536",
                               "--access_log", "false"])
    yield proc, url, lines
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _local_engine(checkpoints):
    """The same construction as `wb deploy`'s, in this process."""
    from swiftlike.config import DeployConfig
    from swiftlike.pipelines.deploy import build_engine, served_base

    cfg = DeployConfig(adapters=[f"{n}={p}" for n, p in checkpoints.items()], max_batch_size=1,
                       torch_dtype="float32").validate()
    return build_engine(cfg, served_base(cfg, cfg.adapter_paths()), cfg.adapter_paths())


@pytest.mark.slow
def test_vllm_engine_gets_the_base_weights_adapters_and_context(checkpoints, monkeypatch):
    """What `wb deploy --infer_backend vllm` hands vLLM (vLLM itself runs only on GPU machines)."""
    import swiftlike.infer.vllm as vllm_backend
    from swiftlike.config import DeployConfig
    from swiftlike.pipelines.deploy import build_engine, served_base

    class Recorder:
        def __init__(self, model_dir, tokenizer, template, **kw):
            self.model_dir, self.template, self.kw = model_dir, template, kw

    monkeypatch.setattr(vllm_backend, "require_vllm", lambda: None)
    monkeypatch.setattr(vllm_backend, "VLLMEngine", Recorder)
    cfg = DeployConfig(adapters=[f"{n}={p}" for n, p in checkpoints.items()], infer_backend="vllm",
                       max_batch_size=16).validate()
    engine = build_engine(cfg, served_base(cfg, cfg.adapter_paths()), cfg.adapter_paths())
    args = json.loads((Path(checkpoints["a"]) / "args.json").read_text())
    assert engine.model_dir == args["base_model_dir"] and engine.template.name == "qwen3"
    assert engine.kw["adapters"] == checkpoints and engine.kw["default_model"] == "base"
    assert engine.kw["max_batch_size"] == 16 and engine.kw["max_model_len"] == 40960
    cfg = DeployConfig(model="Qwen/Qwen3-0.6B", miniature=True, infer_backend="vllm").validate()
    with pytest.raises(UserError, match="a --miniature exists only in memory"):
        build_engine(cfg, served_base(cfg, {}), {})


QUESTIONS = ["Who are you?", "What is 2 + 2?", "Name a colour.", "Say hello in French.", "Why is the sky blue?",
             "Count to three.", "What day is it?", "Tell me a joke."]


@pytest.mark.slow
def test_deploy_serves_the_base_and_each_adapter_by_name(deployed, checkpoints):
    _, url, _ = deployed
    client = OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["Qwen/Qwen3-0.6B", "a", "b"]
    engine = _local_engine(checkpoints)
    try:
        plain = without_tool_parser(engine.template)
        messages = [{"role": "user", "content": "Who are you?"}]
        prompt = engine.template.encode_prompt(messages)
        answers = {}
        for model, adapter in (("Qwen/Qwen3-0.6B", "base"), ("a", "a"), ("b", "b")):
            r = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
            (local,) = engine.generate([prompt], SamplingParams(max_new_tokens=12), adapter=adapter)[0]
            assert r.choices[0].message.content == plain.parse_response(local.text)["content"]
            assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens == len(local.token_ids)
            answers[model] = r.choices[0].message.content
        assert len(set(answers.values())) == 3                                 # three different models
    finally:
        engine.close()


@pytest.mark.slow
def test_deploy_streams_and_renders_tools(deployed):
    _, url, _ = deployed
    client = OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    whole = client.chat.completions.create(model="a", messages=messages, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model="a", messages=messages, max_tokens=16, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    # a tools round trip: the tools, the assistant's call and the tool's answer are rendered by our template
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'}]
    r = client.chat.completions.create(model="b", messages=messages, tools=[WEATHER_TOOL], max_tokens=8,
                                       temperature=0)
    assert r.choices[0].finish_reason in ("length", "stop", "tool_calls") and r.usage.prompt_tokens > 100


@pytest.mark.slow
def test_deploy_refuses_bad_requests(deployed):
    _, url, _ = deployed
    key = {"Authorization": "Bearer k3y"}
    with pytest.raises(openai.AuthenticationError):
        _chat(OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0), "hi", max_tokens=2)
    assert _error(_http(url, "POST", "/v1/chat/completions", b"{not json", key), 400)["code"] == "invalid_json"
    big = {"model": "a", "messages": [{"role": "user", "content": "x" * 70_000}]}
    assert _error(_http(url, "POST", "/v1/chat/completions", big, key), 413)["code"] == "request_too_large"
    body = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}
    assert _error(_http(url, "POST", "/v1/chat/completions", body, key), 400)["code"] == "max_tokens_exceeded"
    body = {"model": "c", "messages": [{"role": "user", "content": "hi"}]}
    assert _error(_http(url, "POST", "/v1/chat/completions", body, key), 404)["code"] == "model_not_found"


@pytest.mark.slow
def test_deploy_answers_32_concurrent_requests_as_sequential_greedy_ones(deployed):
    _, url, _ = deployed
    jobs = [(("Qwen/Qwen3-0.6B", "a", "b")[i % 3], QUESTIONS[i % len(QUESTIONS)] + " " * (i // 8)) for i in range(32)]

    def sequential():
        client = OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
        return [_chat(client, q, model=m, max_tokens=10, temperature=0).choices[0].message.content for m, q in jobs]

    async def concurrent():
        client = AsyncOpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)

        async def one(i, model, question):
            kw = dict(model=model, messages=[{"role": "user", "content": question}], max_tokens=10, temperature=0)
            if i % 2:
                return "".join([c.choices[0].delta.content or "" async for c in
                                await client.chat.completions.create(stream=True, **kw)])
            return (await client.chat.completions.create(**kw)).choices[0].message.content
        return await asyncio.gather(*[one(i, m, q) for i, (m, q) in enumerate(jobs)])

    assert asyncio.run(concurrent()) == sequential()


@pytest.mark.slow
def test_deploy_drains_on_sigterm(deployed):
    import signal

    proc, url, lines = deployed
    client = OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
    stream = _chat(client, "Tell me a long story.", model="b", max_tokens=64, temperature=0, stream=True)
    chunks = [next(iter(stream))]
    proc.send_signal(signal.SIGTERM)                      # mid-stream
    chunks += list(stream)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert proc.wait(timeout=60) == 0
    with pytest.raises(openai.APIConnectionError):        # nothing listens any more
        _chat(client, "hi", max_tokens=2)
    deadline = time.monotonic() + 10
    while not any("stopped (SIGTERM)" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)                                  # the reader thread has the last lines
    assert any("stopped (SIGTERM)" in line for line in lines), "".join(lines)


@pytest.mark.slow
def test_a_dropped_stream_frees_its_slot_in_the_real_engine(checkpoints):
    engine = _local_engine(checkpoints)
    try:
        settings = ServeSettings(model_name="mini", max_model_len=4096)
        with BackgroundServer(create_app(engine, settings)) as server:
            client = OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
            stream = _chat(client, "Tell me everything.", model="a", max_tokens=3000, temperature=0, stream=True)
            chunks = iter(stream)
            next(chunks), next(chunks)                   # generating
            assert engine.stats()["running"] == 1
            stream.close()
            deadline = time.monotonic() + 5               # 3,000 tokens take far longer than this
            while engine.stats() != {"running": 0, "waiting": 0} and time.monotonic() < deadline:
                time.sleep(0.02)
            assert engine.stats() == {"running": 0, "waiting": 0}
    finally:
        engine.close()


@pytest.mark.parametrize("args, config, message", [
    ({"task": "rm"}, {}, "is a reward model (`wb rm`)"),
    ({"template": "chatml"}, {}, "was trained with template chatml, the server renders every request with qwen3"),
    ({}, {"use_dora": True}, "is a DoRA adapter, which PEFT cannot mix"),
])
def test_adapters_that_cannot_be_served_beside_the_base_are_refused(tmp_path, args, config, message):
    from swiftlike.errors import UserError
    from swiftlike.pipelines.deploy import BaseModel, check_adapters

    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "args.json").write_text(json.dumps({"model": "Qwen/Qwen3-0.6B", "task": "sft", "template": "qwen3",
                                                   "miniature": True, **args}))
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x", **config}))
    base = BaseModel("Qwen/Qwen3-0.6B", frozenset({"Qwen/Qwen3-0.6B"}), True,
                     {"model": "Qwen/Qwen3-0.6B", "miniature": True, "template": None, "hub": "huggingface"})
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_adapters(base, {"a": str(adapter)})

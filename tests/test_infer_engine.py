"""The inference engine (swiftlike.infer): continuous batching equals one-by-one greedy decoding, seeded
sampling, stop strings, n completions, cancellation, several LoRA adapters in one batch, streaming (threads and
asyncio), log-probs, bad values, and the vLLM backend's translation layer checked with stand-ins."""
import asyncio
import sys
import threading
import types

import pytest
import torch

from swiftlike.errors import UserError
from swiftlike.infer import Completion, SamplingParams
from swiftlike.infer.text import TextStream

MODEL = "Qwen/Qwen3-0.6B"
# prompts of different lengths (token ids of the miniature's real Qwen3 vocabulary)
PROMPTS = [[100, 200, 300], [400, 500], [7, 8, 9, 10, 11, 12, 13, 14, 15], [42] * 20, [5, 6, 7, 8], [900]]


@pytest.fixture(scope="module")
def parts():
    from swiftlike.models import build_miniature, load_tokenizer
    from swiftlike.templates import get_template

    tokenizer = load_tokenizer(MODEL, miniature=True)
    return build_miniature(MODEL).eval(), tokenizer, get_template("qwen3", tokenizer)


@pytest.fixture(scope="module")
def engine(parts):
    from swiftlike.infer.engine import TransformersEngine

    with TransformersEngine(*parts, max_batch_size=4) as e:
        yield e


def _alone(model, prompt, max_new_tokens, stops, **kw):
    """model.generate greedy on one prompt, the stop token removed (what the engine returns)."""
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=0,
                         temperature=None, top_p=None, top_k=None, **kw)[0, len(prompt):].tolist()
    return out[:-1] if out and out[-1] in stops else out


def test_continuous_batching_equals_one_by_one_greedy(parts, engine):
    model = parts[0]
    budgets = [12, 3, 9, 16, 5, 7]  # rows leave at different steps; 6 prompts through 4 slots: later ones join
    requests = [engine.submit(p, SamplingParams(max_new_tokens=b)) for p, b in zip(PROMPTS, budgets)]
    for prompt, budget, request in zip(PROMPTS, budgets, requests):
        [completion] = request.result(timeout=60)
        assert completion.token_ids == _alone(model, prompt, budget, engine.stop_token_ids)
        assert completion.finish_reason == "length" and len(completion.token_ids) == budget
        assert completion.text == parts[1].decode(completion.token_ids)
    assert engine.stats() == {"running": 0, "waiting": 0}


def test_repetition_penalty_equals_transformers(parts, engine):
    model = parts[0]
    [[got]] = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=10, repetition_penalty=1.5))
    assert got.token_ids == _alone(model, PROMPTS[0], 10, engine.stop_token_ids, repetition_penalty=1.5)


def _openai_penalized(model, prompt, steps, stops, presence, frequency, bias):
    """Greedy decoding under OpenAI's formula, by hand: logit - frequency x count - presence x (count > 0) over
    the tokens generated so far, + logit_bias."""
    ids, out = list(prompt), []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].float()
        for t in set(out):
            logits[t] -= frequency * out.count(t) + presence
        for t, b in bias.items():
            logits[t] += b
        token = int(logits.argmax())
        if token in stops:
            break
        out.append(token)
        ids.append(token)
    return out


def test_presence_frequency_penalties_and_logit_bias_follow_openais_formula(parts, engine):
    [[free]] = engine.generate([PROMPTS[3]], SamplingParams(max_new_tokens=12))
    bias = {free.token_ids[0]: -100.0, 77: 1.5}
    params = SamplingParams(max_new_tokens=12, presence_penalty=1.5, frequency_penalty=0.7, logit_bias=bias)
    [[got], [also]] = engine.generate([PROMPTS[3], PROMPTS[1]], params)  # (a batch: each row its own counts)
    stops = engine.stop_token_ids
    assert got.token_ids == _openai_penalized(parts[0], PROMPTS[3], 12, stops, 1.5, 0.7, bias)
    assert also.token_ids == _openai_penalized(parts[0], PROMPTS[1], 12, stops, 1.5, 0.7, bias)
    assert got.token_ids != free.token_ids and free.token_ids[0] not in got.token_ids
    with pytest.raises(UserError, match="logit_bias: token id 999999 is outside the vocabulary"):
        engine.submit(PROMPTS[0], SamplingParams(logit_bias={999999: 1.0}))
    with pytest.raises(UserError, match="presence_penalty must be in"):
        SamplingParams(presence_penalty=3).validate()


def test_stop_token_ends_the_completion_and_is_left_out(parts):
    from swiftlike.infer.engine import TransformersEngine

    model, tokenizer, template = parts
    free = _alone(model, PROMPTS[2], 8, [])
    stop = free[3]
    template = types.SimpleNamespace(stop_token_ids=[stop])  # pretend the 4th token ends the turn
    with TransformersEngine(model, tokenizer, template) as e:
        [[c]] = e.generate([PROMPTS[2]], SamplingParams(max_new_tokens=8))
    assert c.token_ids == free[:free.index(stop)] and c.finish_reason == "stop"


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(engine):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    alone = engine.generate([PROMPTS[0]], params)[0][0].token_ids
    crowd = engine.generate([PROMPTS[3], PROMPTS[0], PROMPTS[1]], params)
    assert crowd[1][0].token_ids == alone
    other = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=8, temperature=1.0, seed=8))
    assert other[0][0].token_ids != alone


def test_n_completions(engine):
    greedy = engine.generate([PROMPTS[1]], SamplingParams(max_new_tokens=5, n=3))[0]
    assert len(greedy) == 3 and all(c.token_ids == greedy[0].token_ids for c in greedy)
    sampled = engine.generate([PROMPTS[1]], SamplingParams(max_new_tokens=6, n=3, temperature=1.5, seed=1))[0]
    assert len({tuple(c.token_ids) for c in sampled}) == 3
    request = engine.submit(PROMPTS[1], SamplingParams(max_new_tokens=4, n=2))
    deltas = list(request)
    assert sorted({d.index for d in deltas}) == [0, 1]
    assert sorted(d.index for d in deltas if d.finish_reason) == [0, 1]


def test_stop_strings_cut_the_text_and_streaming_never_shows_them(parts, engine):
    tokenizer = parts[1]
    [[free]] = engine.generate([PROMPTS[4]], SamplingParams(max_new_tokens=16))
    text = free.text
    stop = text[len(text) // 2: len(text) // 2 + 3]  # a piece from the middle, likely across tokens
    assert stop.strip()
    request = engine.submit(PROMPTS[4], SamplingParams(max_new_tokens=16, stop=(stop,)))
    streamed = "".join(d.text for d in request)
    [c] = request.result()
    assert c.finish_reason == "stop" and c.text == text[:text.index(stop)] and streamed == c.text
    assert tokenizer.decode(c.token_ids).startswith(c.text) and stop in tokenizer.decode(c.token_ids)


def test_text_stream_holds_back_stop_prefixes_and_partial_characters(qwen3_tokenizer):
    ids = qwen3_tokenizer.encode("Hello wor" + "ld! 你好 END more")
    stream = TextStream(qwen3_tokenizer, stop=("END",))
    shown = "".join(stream.push(t) for t in ids if not stream.stopped)
    assert stream.stopped and stream.text == "Hello world! 你好 " and shown == stream.text
    emoji = qwen3_tokenizer.encode("🙂")  # several byte-level tokens for one character
    stream = TextStream(qwen3_tokenizer)
    pieces = [stream.push(t) for t in emoji]
    assert pieces[:-1] == [""] * (len(emoji) - 1) and pieces[-1] == "🙂"
    stream = TextStream(qwen3_tokenizer, stop=("ab",))
    assert stream.push(qwen3_tokenizer.convert_tokens_to_ids("a")) == "" and stream.finish() == "a"


def test_cancel_frees_the_slot(parts):
    from swiftlike.infer.engine import TransformersEngine

    with TransformersEngine(*parts, max_batch_size=1) as e:
        e._stops = set()  # the random model must not end on its own
        long = e.submit(PROMPTS[0], SamplingParams(max_new_tokens=100_000))
        queued = e.submit(PROMPTS[1], SamplingParams(max_new_tokens=3))
        first = next(iter(long))
        assert first.token_ids and e.stats() == {"running": 1, "waiting": 1}
        long.cancel()
        [c] = queued.result(timeout=60)
        assert len(c.token_ids) == 3
        [aborted] = long.result(timeout=60)
        assert aborted.finish_reason == "abort" and 0 < len(aborted.token_ids) < 100_000
        waiting = e.submit(PROMPTS[2], SamplingParams(max_new_tokens=100_000))
        blocker = e.submit(PROMPTS[3], SamplingParams(max_new_tokens=100_000))
        waiting.cancel()
        blocker.cancel()
        assert waiting.result(timeout=60)[0].finish_reason == "abort"
        assert blocker.result(timeout=60)[0].finish_reason == "abort"
        assert e.stats() == {"running": 0, "waiting": 0}


def test_a_prefill_that_fails_fails_its_own_request_and_the_batch_runs_on(parts, capsys):
    """Out of memory on one long prompt (simulated) fails that request; a completion already decoding goes on to
    the tokens it would have had alone (it once failed with it: the whole running batch was dropped)."""
    from swiftlike.infer.engine import TransformersEngine

    model = parts[0]
    go = threading.Event()
    with TransformersEngine(*parts, max_batch_size=4) as e:
        e._stops = set()
        call = e._batch.call

        def flaky(ids, mask, positions, cache, **kw):
            if ids.shape[1] == 1:
                go.wait(timeout=60)  # decoding waits until the long prompt has been submitted
            elif ids.shape[1] > 15:
                raise RuntimeError("CUDA out of memory (simulated)")
            return call(ids, mask, positions, cache, **kw)
        e._batch.call = flaky
        running = e.submit(PROMPTS[0], SamplingParams(max_new_tokens=12))
        while e.stats()["running"] == 0:
            threading.Event().wait(0.01)
        long = e.submit(PROMPTS[3], SamplingParams(max_new_tokens=4))  # 20 tokens
        go.set()
        with pytest.raises(RuntimeError, match="out of memory"):
            long.result(timeout=60)
        [completion] = running.result(timeout=60)
        assert completion.token_ids == _alone(model, PROMPTS[0], 12, [])
        [after] = e.submit(PROMPTS[1], SamplingParams(max_new_tokens=3)).result(timeout=60)
        assert after.token_ids == _alone(model, PROMPTS[1], 3, [])
        assert e.stats() == {"running": 0, "waiting": 0}
    assert "[wb] generation failed: RuntimeError: CUDA out of memory (simulated)" in capsys.readouterr().err


def test_async_iteration_gives_the_same_deltas(engine):
    params = SamplingParams(max_new_tokens=6, logprobs=True, top_logprobs=3)

    async def collect():
        requests = [engine.submit(p, params) for p in PROMPTS[:3]]
        streams = await asyncio.gather(*[_drain(r) for r in requests])
        return streams, [r.result() for r in requests]

    async def _drain(r):
        return [d async for d in r]

    streams, results = asyncio.run(collect())
    for deltas, [c] in zip(streams, results):
        assert [t for d in deltas for t in d.token_ids] == c.token_ids
        assert "".join(d.text for d in deltas) == c.text and deltas[-1].finish_reason == "length"
        assert len(c.logprobs) == len(c.token_ids)
        for token, entry in zip(c.token_ids, c.logprobs):  # greedy: the chosen token is the most likely one
            assert entry["token_id"] == token == entry["top"][0]["token_id"] and len(entry["top"]) == 3
            assert entry["logprob"] == pytest.approx(entry["top"][0]["logprob"]) and entry["logprob"] <= 0


def test_threads_submit_concurrently(engine):
    results = {}

    def ask(i):
        results[i] = engine.generate([PROMPTS[i]], SamplingParams(max_new_tokens=4))[0][0].token_ids

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    one_call = [c[0].token_ids for c in engine.generate(PROMPTS, SamplingParams(max_new_tokens=4))]
    assert [results[i] for i in range(len(PROMPTS))] == one_call


@pytest.mark.parametrize("bad, message", [
    (dict(temperature=-0.1), "temperature must be >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(n=0), "n .* must be at least 1"),
    (dict(max_new_tokens=0), "max_new_tokens must be at least 1"),
    (dict(top_k=-1), "top_k must be >= 0"),
])
def test_bad_sampling_values(engine, bad, message):
    with pytest.raises(UserError, match=message):
        engine.submit(PROMPTS[0], SamplingParams(**bad))


def test_unknown_adapter_and_empty_prompt(engine):
    with pytest.raises(UserError, match="unknown model 'nope'; this engine serves base"):
        engine.submit(PROMPTS[0], SamplingParams(), adapter="nope")
    with pytest.raises(UserError, match="empty"):
        engine.submit([], SamplingParams())


def _adapter_dir(path, seed):
    from peft import LoraConfig, get_peft_model

    from swiftlike.models import build_miniature

    model = get_peft_model(build_miniature(MODEL), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # as if trained: each adapter changes the answers
    model.save_pretrained(path)
    return str(path)


def test_mixed_adapters_in_one_batch_equal_each_adapter_alone(parts, tmp_path):
    from swiftlike.infer.engine import TransformersEngine
    from swiftlike.models import build_miniature

    adapters = {"a": _adapter_dir(tmp_path / "a", 1), "b": _adapter_dir(tmp_path / "b", 2)}
    params = SamplingParams(max_new_tokens=6)
    with TransformersEngine(build_miniature(MODEL).eval(), *parts[1:], max_batch_size=8, adapters=adapters) as e:
        assert e.model_names == ["base", "a", "b"] and e.default_model == "a"
        plan = [("base", PROMPTS[0]), ("a", PROMPTS[0]), ("b", PROMPTS[0]), ("b", PROMPTS[2]), ("base", PROMPTS[3])]
        together = [e.submit(p, params, adapter=name) for name, p in plan]
        together = [r.result(timeout=60)[0].token_ids for r in together]
        alone = [e.generate([p], params, adapter=name)[0][0].token_ids for name, p in plan]
        model = e.model
    assert together == alone
    assert len({tuple(t) for t in together[:3]}) == 3  # the adapters do change the answer
    model.set_adapter("b")
    assert together[3] == _alone(model, PROMPTS[2], 6, e.stop_token_ids)
    with model.disable_adapter():
        assert together[0] == _alone(model, PROMPTS[0], 6, e.stop_token_ids)


# -- vLLM: the translation layer, with stand-ins for vllm's classes ---------------------------------------
class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _FakeAsyncEngine:
    """Streams cumulative outputs as vLLM does: token ids 10, 11, ... then the stop token 2 (or the budget)."""

    def __init__(self, args):
        self.args, self.calls, self.aborted = args, [], []

    @classmethod
    def from_engine_args(cls, args):
        return cls(args)

    async def generate(self, prompt, sampling, request_id, lora_request=None):
        self.calls.append((prompt, sampling, request_id, lora_request))
        n, budget = sampling.kwargs["n"], sampling.kwargs["max_tokens"]
        for step in range(1, 5):
            await asyncio.sleep(0)
            if request_id in self.aborted:
                return
            done = step == 4 or step == budget
            ids = [10 + i for i in range(step)] if not (done and step == 4) else [10, 11, 12, 2]
            reason = ("stop" if step == 4 else "length") if done else None
            yield types.SimpleNamespace(outputs=[types.SimpleNamespace(
                index=i, token_ids=ids, text="".join(f"<{t}>" for t in ids), finish_reason=reason,
                logprobs=[{t: types.SimpleNamespace(logprob=-0.5, rank=1, decoded_token=f"<{t}>")} for t in ids])
                for i in range(n)])
            if done:
                return

    async def abort(self, request_id):
        self.aborted.append(request_id)

    def shutdown(self):
        pass


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = vllm.AsyncEngineArgs = _Recorder
    vllm.AsyncLLMEngine = _FakeAsyncEngine
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = _Recorder
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    return vllm


class _Tok:
    eos_token_id = 2

    def decode(self, ids, skip_special_tokens=False):
        return "".join(f"<{t}>" for t in ids)


def test_vllm_request_translation_and_outputs(fake_vllm, tmp_path):
    from swiftlike.infer.vllm import VLLMEngine, vllm_sampling

    s = vllm_sampling(SamplingParams(max_new_tokens=7, temperature=0.5, top_k=0, stop=("##",), seed=3, n=2,
                                     logprobs=True, top_logprobs=2), [2, 5])
    assert s.kwargs == dict(n=2, temperature=0.5, top_p=1.0, top_k=-1, repetition_penalty=1.0, presence_penalty=0.0,
                            frequency_penalty=0.0, logit_bias=None, max_tokens=7,
                            stop=["##"], stop_token_ids=[2, 5], seed=3, logprobs=2,
                            include_stop_str_in_output=False, skip_special_tokens=False)
    (tmp_path / "ad").mkdir()
    (tmp_path / "ad" / "adapter_config.json").write_text('{"r": 16}')
    template = types.SimpleNamespace(stop_token_ids=[2])
    engine = VLLMEngine(str(tmp_path), _Tok(), template, adapters={"mine": str(tmp_path / "ad")},
                        max_batch_size=64, seed=1)
    try:
        args = engine._engine.args.kwargs
        assert args["enable_lora"] and args["max_lora_rank"] == 16 and args["max_num_seqs"] == 64
        assert engine.model_names == ["base", "mine"] and engine.default_model == "mine"
        request = engine.submit([1, 2, 3], SamplingParams(max_new_tokens=10, n=2, logprobs=True, top_logprobs=1))
        deltas = list(request)
        [a, b] = request.result(timeout=10)
        assert a == b and a.token_ids == [10, 11, 12] and a.text == "<10><11><12>" and a.finish_reason == "stop"
        assert a.logprobs[0] == {"token_id": 10, "token": "<10>", "logprob": -0.5,
                                 "top": [{"token_id": 10, "token": "<10>", "logprob": -0.5}]}
        assert "".join(d.text for d in deltas if d.index == 0) == a.text
        prompt, sampling, _, lora = engine._engine.calls[0]
        assert prompt == {"prompt_token_ids": [1, 2, 3]} and sampling.kwargs["stop_token_ids"] == [2]
        assert lora.args == ("mine", 1, str(tmp_path / "ad"))
        [[short]] = engine.generate([[4]], SamplingParams(max_new_tokens=2), adapter="base")
        assert short == Completion([10, 11], "<10><11>", "length", None)
        assert engine._engine.calls[-1][3] is None  # the base: no LoRARequest
        with pytest.raises(UserError, match="unknown model"):
            engine.submit([1], SamplingParams(), adapter="other")
    finally:
        engine.close()


def test_vllm_engine_that_fails_to_start_leaves_no_thread(fake_vllm, tmp_path, monkeypatch):
    import threading

    from swiftlike.infer.vllm import VLLMEngine

    def refuse(args):
        raise RuntimeError("CUDA out of memory")
    monkeypatch.setattr(_FakeAsyncEngine, "from_engine_args", staticmethod(refuse))
    with pytest.raises(RuntimeError, match="out of memory"):
        VLLMEngine(str(tmp_path), _Tok(), types.SimpleNamespace(stop_token_ids=[2]))
    assert not [t for t in threading.enumerate() if t.name == "wb-vllm"]


def test_vllm_missing_is_one_line(monkeypatch):
    from swiftlike.infer.vllm import require_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails
    with pytest.raises(UserError, match="pip install vllm"):
        require_vllm()


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["google/gemma-3-4b-it", "mistralai/Mixtral-8x7B-Instruct-v0.1",
                                      "deepseek-ai/DeepSeek-V3"])
def test_other_architectures_batch_like_one_by_one(model_id):
    """Sliding-window and global layers (Gemma 3), mixture of experts (Mixtral), latent attention (DeepSeek-V3)."""
    from swiftlike.infer.engine import TransformersEngine
    from swiftlike.models import build_miniature

    model = build_miniature(model_id).eval()
    template = types.SimpleNamespace(stop_token_ids=[])
    tokenizer = types.SimpleNamespace(pad_token_id=0, eos_token_id=None, decode=lambda ids, **k: "")  # ids only
    budgets = [8, 3, 6, 8]
    with TransformersEngine(model, tokenizer, template, max_batch_size=3) as e:
        e._stops = set()
        requests = [e.submit(p, SamplingParams(max_new_tokens=b)) for p, b in zip(PROMPTS, budgets)]
        got = [r.result(timeout=120)[0].token_ids for r in requests]
    assert got == [_alone(model, p, b, []) for p, b in zip(PROMPTS, budgets)]


def test_wb_infer_with_the_vllm_backend(fake_vllm, parts, tmp_path, capsys):
    from swiftlike.cli.main import main

    model, tokenizer, _ = parts
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    assert main(["infer", "--model", str(tmp_path / "m"), "--template", "qwen3", "--infer_backend", "vllm",
                 "--query", "hi", "--max_new_tokens", "3", "--max_batch_size", "8"]) == 0
    assert capsys.readouterr().out.strip() == "<10><11><12>"  # the stand-in engine's tokens, as its text says
    code = main(["infer", "--model", MODEL, "--miniature", "--infer_backend", "vllm", "--query", "hi"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("wb: error: --infer_backend vllm loads model files") and "\n" not in err


def test_a_prompts_last_positions_reach_the_output_layer_as_one_matrix():
    """The prefill's last positions (a strided rows x 1 x width slice) are made contiguous before the output layer,
    so its matmul is one GEMM, not one per row over the whole vocabulary (a CPU rollout spent 12% of its time
    there); the logits are the model's own, decode steps are untouched, and no hook stays on the model."""
    from swiftlike.infer.decode import ModelCall, left_pad
    from swiftlike.models import build_miniature

    model = build_miniature(MODEL).eval()
    head, seen = model.get_output_embeddings(), []
    head.register_forward_hook(lambda module, args, out: seen.append(args[0].is_contiguous()))
    call = ModelCall(model)
    ids, mask, positions = left_pad([[5, 6, 7, 8], [9, 10]], 0, "cpu")
    with torch.no_grad():
        logits, cache = call(ids, mask, positions, None)
        expected = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1, :]
        call(torch.tensor([[11], [12]]), torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1),
             positions[:, -1:] + 1, cache)
    assert seen[0] and seen[2] and len(head._forward_pre_hooks) == 0
    torch.testing.assert_close(logits, expected)

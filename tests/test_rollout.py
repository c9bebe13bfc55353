"""Generation backends: stop-token cuts, the weight-sync payload, the `wb rollout` server and its client, and
the vLLM adapters that can be checked without a GPU."""
import threading
from types import SimpleNamespace

import pytest
import torch

from swiftlike.rollout import Sampling, cut_at_stop


def test_cut_at_stop_keeps_the_stop_token_and_nothing_after():
    assert cut_at_stop([5, 6, 9, 7, 9], {9}, 10) == [5, 6, 9]
    assert cut_at_stop([5, 6, 7], {9}, 10) == [5, 6, 7]
    assert cut_at_stop([5, 6, 7, 8], {9}, 2) == [5, 6]


@pytest.fixture(scope="module")
def miniature():
    from swiftlike.models import build_miniature

    return build_miniature("Qwen/Qwen3-0.6B").eval()


def test_hf_rollout_groups_and_stops(miniature):
    from swiftlike.rollout.hf import HFRollout

    rollout = HFRollout(miniature, pad_token_id=0)
    prompts = [[100, 200, 300], [400, 500]]                     # different lengths: left padding
    free = rollout.generate(prompts, 2, Sampling(max_tokens=6, temperature=1e-4, seed=0))
    assert len(free) == 4 and all(len(c) == 6 for c in free)
    assert free[0] == free[1] and free[2] == free[3]            # near-greedy: a group's samples agree
    stop = free[0][2]
    cut = rollout.generate(prompts, 2, Sampling(max_tokens=6, temperature=1e-4, seed=0, stop_token_ids=(stop,)))
    assert cut[0] == free[0][:free[0].index(stop) + 1]          # ends at the first stop token, which is kept
    for c in cut:
        assert stop not in c[:-1] and (c[-1] == stop or len(c) == 6)


def test_hf_rollout_batches_equal_one_call(miniature):
    from swiftlike.rollout.hf import HFRollout

    prompts = [[100, 200, 300], [400, 500], [7, 8, 9, 10]]
    s = Sampling(max_tokens=5, temperature=1e-4, seed=0)
    in_pieces = HFRollout(miniature, 0, max_batch=2).generate(prompts, 2, s)
    assert in_pieces == HFRollout(miniature, 0).generate(prompts, 2, s)


def _lora_model(seed=0):
    from peft import LoraConfig, get_peft_model

    from swiftlike.models import build_miniature

    model = get_peft_model(build_miniature("Qwen/Qwen3-0.6B", seed=seed),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)                                # as if trained
    return model.eval()


def _logits(model, ids=(1, 50, 900, 3000, 7)):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def _varlen_lora_model():
    """The LoRA policy as training builds it on a GPU: padding-free attention (wb_varlen), the LoRA layers'
    own forward (models/lora_compute.py)."""
    from swiftlike.models import attention
    from swiftlike.models.lora_compute import compute_in_stream_dtype

    attention.register()
    model = _lora_model()
    assert compute_in_stream_dtype(model) == 14
    model.config._attn_implementation = attention.VARLEN
    return model


STATIC_CASES = {
    "near-greedy": Sampling(max_tokens=9, temperature=1e-4, seed=0),
    "sampled, top-p, penalty": Sampling(max_tokens=9, temperature=1.0, top_p=0.9, repetition_penalty=1.3, seed=3),
}


@pytest.mark.parametrize("case", list(STATIC_CASES))
def test_static_cache_generates_what_the_growing_cache_does(case):
    """Left padding, stop tokens, batches in pieces (the last a different size), a LoRA policy loaded with the
    padding-free attention: the static cache (infer/static_cache.py) gives the same completions, and the model's
    attention choice is back after."""
    from swiftlike.rollout.hf import HFRollout

    model = _varlen_lora_model()
    prompts = [[100, 200, 300], [400, 500], [7, 8, 9, 10, 11, 12, 13]]
    sampling = STATIC_CASES[case]
    growing = HFRollout(model, 0, max_batch=4, static_cache=False).generate(prompts, 2, sampling)
    static = HFRollout(model, 0, max_batch=4, static_cache=True)
    assert static.generate(prompts, 2, sampling) == growing
    assert model.config._attn_implementation == "wb_varlen"
    stop = growing[0][3]
    stopped = Sampling(**{**vars(sampling), "stop_token_ids": (stop,)})
    assert static.generate(prompts, 2, stopped) == HFRollout(model, 0, max_batch=4, static_cache=False).generate(
        prompts, 2, stopped)
    assert len({len(c) for c in growing}) == 1 and len(growing[0]) == 9   # nothing stopped the first run


def _logit_trace(rollout, rows, steps: int = 10) -> list[torch.Tensor]:
    """The logits after the prompts and after each of `steps` forced tokens (the same tokens for any cache)."""
    from swiftlike.infer.decode import left_pad

    device = next(rollout.model.parameters()).device
    ids, mask, positions = left_pad(rows, 0, device)
    forced = torch.Generator().manual_seed(0)
    with torch.no_grad(), rollout.decoding(ids, mask, positions, steps) as (logits, advance):
        trace = [logits.float().cpu()]
        for _ in range(steps):
            tokens = torch.randint(1, 1000, (len(rows),), generator=forced).to(device)
            trace.append(advance(tokens).float().cpu())
    return trace


@pytest.mark.parametrize("model_id", ["google/gemma-3-1b-it", "google/gemma-2-2b-it", "deepseek-ai/DeepSeek-V3",
                                      "Qwen/Qwen2.5-VL-3B-Instruct"])
def test_static_cache_across_families(model_id):
    """Sliding-window layers (Gemma-2/3, a window of 4 tokens that prompts and decoding cross), eager attention
    with soft-capping (Gemma-2), latent attention (DeepSeek-V3) and a vision-language model's text prompts: the
    static cache gives the growing cache's logits at every step, to float32 rounding. (Every registered family
    agreed when this was written; these four cover the cache layouts.)"""
    from swiftlike.models.loader import auto_class, miniature_config
    from swiftlike.rollout.hf import HFRollout

    config = miniature_config(model_id)
    if getattr(config.get_text_config(), "sliding_window", None):
        config.get_text_config().sliding_window = 4
    torch.manual_seed(0)
    model = auto_class(config).from_config(config, dtype=torch.float32).eval()
    rows = [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14], [15, 16, 17]]
    static = _logit_trace(HFRollout(model, 0, static_cache=True), rows)
    growing = _logit_trace(HFRollout(model, 0, static_cache=False), rows)
    for step, (a, b) in enumerate(zip(static, growing)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m: f"step {step}: {m}")


@pytest.mark.gpu
@pytest.mark.parametrize("compile", [None, dict(mode="reduce-overhead", dynamic=False)],
                         ids=["default", "inductor"])
def test_cuda_graph_decoding_of_a_liger_patched_lora_policy(compile):
    """GRPO's default rollout on CUDA, for the policy as training builds it there (Liger's kernels, LoRA layers in
    the stream's dtype): the decode step is compiled as one graph without breaks and recorded as CUDA graphs (none
    skipped: Liger's kernels, which torch.compile cannot analyse, are off while decoding), and its logits at every
    step equal the eager growing cache's, Liger's kernels included. The default records the traced step through
    torch.compile's "cudagraphs" backend; so does inductor's mode="reduce-overhead", with its own kernels."""
    pytest.importorskip("liger_kernel")
    import sys

    from peft import LoraConfig, get_peft_model
    from torch._dynamo.utils import counters

    from swiftlike.models import build_miniature, kernels
    from swiftlike.models.lora_compute import compute_in_stream_dtype
    from swiftlike.rollout.hf import HFRollout

    base = build_miniature("Qwen/Qwen3-0.6B").cuda()
    family = sys.modules[type(base).__module__]
    saved = dict(vars(family))
    torch._dynamo.reset()
    counters.clear()
    try:
        assert kernels.apply(base) is None
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
        assert compute_in_stream_dtype(model) == 14
        model.eval()
        rollout = HFRollout(model, 0, compile=compile)
        assert rollout.static is not None and rollout.static._graphs
        rows = [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14], [15, 16, 17]]
        graphs = _logit_trace(rollout, rows)
        assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
        assert not counters["graph_break"], list(counters["graph_break"])[:3]
        eager = _logit_trace(HFRollout(model, 0, static_cache=False), rows)
        for step, (a, b) in enumerate(zip(graphs, eager)):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=lambda m: f"step {step}: {m}")
    finally:
        for key, value in saved.items():
            setattr(family, key, value)
        torch._dynamo.reset()


SYNCS = ("item", "_local_scalar_dense", "nonzero", "tolist", "masked_select", "unique")  # device-to-host reads


def test_static_decode_step_is_one_graph_for_every_token_and_batch():
    """What CUDA graphs need: the decode step traces into a single graph (fullgraph: no graph break) with no
    device-to-host read in it, and every later token and every batch of the same shape reuses it (no
    recompilation). On CUDA the same step is recorded as CUDA graphs (torch.compile's "cudagraphs" backend)."""
    from swiftlike.rollout.hf import HFRollout

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model = _varlen_lora_model()
    rollout = HFRollout(model, 0, static_cache=True, compile=dict(backend=backend, fullgraph=True, dynamic=False))
    # near-greedy: a random model's next-token distribution is almost flat, and sampling it at temperature 1 turns
    # a rounding difference between the traced and the eager step (seen on CUDA) into a neighbouring token
    sampling = Sampling(max_tokens=6, temperature=1e-4, seed=0)
    compiled = rollout.generate([[100, 200, 300], [400, 500]], 2, sampling)
    again = rollout.generate([[9, 8, 7, 6], [5]], 2, sampling)               # another batch, same cache length
    assert len(graphs) == 1
    called = [getattr(n.target, "__name__", str(n.target)) for n in graphs[0].graph.nodes
              if n.op in ("call_function", "call_method")]
    assert len(called) > 50 and not set(called) & set(SYNCS), set(called) & set(SYNCS)
    eager = HFRollout(model, 0, static_cache=True)
    assert compiled == eager.generate([[100, 200, 300], [400, 500]], 2, sampling)
    assert again == eager.generate([[9, 8, 7, 6], [5]], 2, sampling)
    torch._dynamo.reset()


def test_policy_weights_reproduce_the_lora_model():
    from swiftlike.models import build_miniature
    from swiftlike.rollout.weights import from_bytes, policy_weights, to_bytes

    policy = _lora_model()
    base = build_miniature("Qwen/Qwen3-0.6B", seed=0)            # what an engine holds: the base weights
    sent = from_bytes(to_bytes(policy_weights(policy)))
    assert all("lora" not in k and "base_layer" not in k for k in sent)
    assert set(sent) <= set(dict(base.named_parameters()))
    assert any(k.endswith("q_proj.weight") for k in sent) and "model.embed_tokens.weight" not in sent
    base.load_state_dict(sent, strict=False)
    assert torch.allclose(_logits(base.eval()), _logits(policy), atol=1e-4)


def test_first_sync_sends_everything():
    from swiftlike.models import build_miniature
    from swiftlike.rollout.weights import policy_weights

    policy = _lora_model()
    other = build_miniature("Qwen/Qwen3-0.6B", seed=7)            # a server started from other weights
    sent = dict(policy_weights(policy, everything=True))
    assert set(sent) == set(dict(other.named_parameters()))       # (a tied output layer is the embedding)
    other.load_state_dict(sent, strict=False)
    assert torch.allclose(_logits(other.eval()), _logits(policy), atol=1e-4)


def test_full_model_sends_its_trainable_parameters():
    from swiftlike.models import build_miniature
    from swiftlike.rollout.weights import policy_weights

    model = build_miniature("Qwen/Qwen3-0.6B")
    model.requires_grad_(False).model.norm.requires_grad_(True)
    assert [n for n, _ in policy_weights(model)] == ["model.norm.weight"]


def test_weight_chunks():
    from swiftlike.rollout.client import weight_chunks

    ws = [(f"w{i}", torch.zeros(10)) for i in range(5)]             # 40 bytes each
    assert [len(c) for c in weight_chunks(ws, limit=100)] == [3, 2]


def test_generate_request_is_json():
    import json

    from swiftlike.rollout.client import generate_request

    req = generate_request([(1, 2)], 3, Sampling(max_tokens=4, stop_token_ids=(9,), seed=1))
    assert json.loads(json.dumps(req)) == {"prompts": [[1, 2]], "n": 3, "sampling": {
        "max_tokens": 4, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0,
        "stop_token_ids": [9], "seed": 1}}


def test_server_generates_and_takes_weights():
    from swiftlike.models import build_miniature
    from swiftlike.rollout.client import ServerRollout
    from swiftlike.rollout.hf import HFRollout
    from swiftlike.rollout.server import HFEngine, serve

    engine = HFEngine(build_miniature("Qwen/Qwen3-0.6B", seed=3).eval(), pad_token_id=0)
    started = threading.Event()
    holder = {}

    def ready(server):
        holder["server"] = server
        started.set()

    threading.Thread(target=serve, args=(engine, "mini", "127.0.0.1", 0, ready), daemon=True).start()
    assert started.wait(30)
    server = holder["server"]
    try:
        client = ServerRollout(f"http://127.0.0.1:{server.server_port}", wait=10)
        assert client.info == {"status": "ok", "backend": "transformers", "model": "mini"}
        policy = _lora_model()
        client.sync_weights(policy)                                  # first sync: every weight
        assert torch.allclose(_logits(engine.model), _logits(policy), atol=1e-4)
        s = Sampling(max_tokens=5, temperature=1e-4, seed=0, stop_token_ids=(2,))
        remote = client.generate([[100, 200, 300], [400, 500]], 2, s)
        assert remote == HFRollout(engine.model, 0).generate([[100, 200, 300], [400, 500]], 2, s)
        with torch.no_grad():                                        # a later sync sends the adapted modules
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.mul_(-1)
        client.sync_weights(policy)
        assert torch.allclose(_logits(engine.model), _logits(policy), atol=1e-4)
        from swiftlike.errors import UserError

        with pytest.raises(UserError, match="HTTP 400"):
            client._call("POST", "/generate", b"{}")
    finally:
        server.shutdown()


def test_client_reports_a_missing_server():
    from swiftlike.errors import UserError
    from swiftlike.rollout.client import ServerRollout

    with pytest.raises(UserError, match="not answering.*wb rollout"):
        ServerRollout("http://127.0.0.1:9", wait=0)


def test_vllm_outputs_are_cut_like_the_other_backends():
    from swiftlike.rollout.vllm_engine import completion_ids

    out = [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[4, 5], finish_reason="stop", stop_reason=9),
                                    SimpleNamespace(token_ids=[4, 9], finish_reason="stop", stop_reason=9),
                                    SimpleNamespace(token_ids=[4, 5, 6], finish_reason="length", stop_reason=None)])]
    assert completion_ids(out, Sampling(max_tokens=3, stop_token_ids=(9,))) == [[4, 5, 9], [4, 9], [4, 5, 6]]


def test_vllm_backend_explains_how_to_install():
    from swiftlike.errors import UserError
    from swiftlike.rollout.vllm_engine import VLLMRollout

    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(UserError, match="pip install vllm"):
        VLLMRollout("/nonexistent")


def test_sampler_draws_from_the_softmax():
    from swiftlike.rollout.hf import sample_next

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    freq = torch.bincount(sample_next(logits, Sampling(temperature=1.0), g), minlength=5).float() / 20000
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.01)
    hot = torch.bincount(sample_next(logits, Sampling(temperature=0.5), g), minlength=5).float() / 20000
    assert torch.allclose(hot, torch.softmax(logits[0] / 0.5, -1), atol=0.01)


def test_sampler_top_k_and_top_p():
    from swiftlike.rollout.hf import sample_next

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20000, 1)
    g = torch.Generator().manual_seed(1)
    k2 = torch.bincount(sample_next(logits, Sampling(top_k=2), g), minlength=4).float() / 20000
    assert k2[2:].sum() == 0 and abs(k2[0] - 0.5 / 0.8) < 0.015
    p = torch.bincount(sample_next(logits, Sampling(top_p=0.7), g), minlength=4).float() / 20000
    assert p[2:].sum() == 0 and abs(p[0] - 0.5 / 0.8) < 0.015       # 0.5 + 0.3 reach 0.7: two tokens kept
    p9 = torch.bincount(sample_next(logits, Sampling(top_p=0.9), g), minlength=4).float() / 20000
    assert p9[3] == 0 and p9[2] > 0.1


def test_repetition_penalty():
    from swiftlike.rollout.hf import penalize_repeats

    out = penalize_repeats(torch.tensor([[2.0, -2.0, 1.0]]), torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]

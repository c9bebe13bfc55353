"""Generation backends: stop-token cuts, the weight-sync payload, the `wb rollout` server and its client, and
the vLLM adapters that can be checked without a GPU."""
import contextlib
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
    attention choice is back after. In float64: the two caches' logits differ by rounding (their attention shapes
    differ), and in float32 that moved a sampled token to its neighbour for 9 of 40 seeds."""
    from swiftlike.rollout.hf import HFRollout

    model = _varlen_lora_model().to(torch.float64)
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


ROWS = [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14], [15, 16, 17]]  # left-padded prompts of three widths


def _family_model(model_id: str, sliding_window: int | None = None):
    """A float32 miniature of `model_id`'s family (seeded); `sliding_window`: its window, where it has one."""
    from swiftlike.models.loader import auto_class, miniature_config

    config = miniature_config(model_id)
    if sliding_window and getattr(config.get_text_config(), "sliding_window", None):
        config.get_text_config().sliding_window = sliding_window
    torch.manual_seed(0)
    return auto_class(config).from_config(config, dtype=torch.float32).eval()


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


def _trace_casting_at_every_call(monkeypatch, rollout) -> list[torch.Tensor]:
    """`_logit_trace` with the LoRA adapters cast at every call, as outside a rollout (no `adapters_cast_once`)."""
    from swiftlike.rollout import hf

    with monkeypatch.context() as m:
        m.setattr(hf, "adapters_cast_once", lambda model: contextlib.nullcontext())
        return _logit_trace(rollout, ROWS)


@pytest.mark.parametrize("model_id", ["google/gemma-3-1b-it", "google/gemma-2-2b-it", "deepseek-ai/DeepSeek-V3",
                                      "Qwen/Qwen2.5-VL-3B-Instruct"])
def test_static_cache_across_families(model_id):
    """Sliding-window layers (Gemma-2/3, a window of 4 tokens that prompts and decoding cross), eager attention
    with soft-capping (Gemma-2), latent attention (DeepSeek-V3) and a vision-language model's text prompts: the
    static cache gives the growing cache's logits at every step, to float32 rounding. (Every registered family
    agreed when this was written; these four cover the cache layouts.)"""
    from swiftlike.rollout.hf import HFRollout

    model = _family_model(model_id, sliding_window=4)
    static = _logit_trace(HFRollout(model, 0, static_cache=True), ROWS)
    growing = _logit_trace(HFRollout(model, 0, static_cache=False), ROWS)
    for step, (a, b) in enumerate(zip(static, growing)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m: f"step {step}: {m}")


@pytest.mark.gpu
@pytest.mark.parametrize("decode", [None, dict(backend="cudagraphs", dynamic=False),
                                    dict(mode="reduce-overhead", dynamic=False)],
                         ids=["default", "cudagraphs", "inductor"])
def test_cuda_graph_decoding_of_a_liger_patched_lora_policy(decode):
    """GRPO's default rollout on CUDA, for the policy as training builds it there (Liger's kernels, LoRA layers in
    the stream's dtype): the decode step is captured once as a CUDA graph per cache and replayed for every later
    token and batch, and its logits at every step equal the eager growing cache's, Liger's kernels computing in
    both (torch.compile's routes decode without them). Through torch.compile (kept for comparison: its "cudagraphs"
    backend, inductor's reduce-overhead) the step is one graph without breaks and no recording is skipped."""
    pytest.importorskip("liger_kernel")
    import sys

    from peft import LoraConfig, get_peft_model
    from torch._dynamo.utils import counters

    from swiftlike.infer import static_cache
    from swiftlike.models import build_miniature, kernels
    from swiftlike.models.lora_compute import compute_in_stream_dtype
    from swiftlike.rollout.hf import HFRollout

    base = build_miniature("Qwen/Qwen3-0.6B").cuda()
    family = sys.modules[type(base).__module__]
    saved = dict(vars(family))
    torch._dynamo.reset()
    counters.clear()
    static_cache.COUNTS.clear()
    try:
        assert kernels.apply(base) is None
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
        assert compute_in_stream_dtype(model) == 14
        model.eval()
        rollout = HFRollout(model, 0, decode=decode)
        assert rollout.static is not None and rollout.static.decode == (decode or "graph")
        graphs = _logit_trace(rollout, ROWS)
        again = _logit_trace(rollout, ROWS)  # the same cache: the same graph
        if decode is None:  # first token eager (the warm-up), then one capture replayed: 9 + 10 replays
            assert dict(static_cache.COUNTS) == {"eager": 1, "captures": 1, "replays": 19}, static_cache.COUNTS
        else:
            assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
            assert not counters["graph_break"], list(counters["graph_break"])[:3]
        eager = _logit_trace(HFRollout(model, 0, static_cache=False), ROWS)
        for step, (a, b, c) in enumerate(zip(graphs, again, eager)):
            torch.testing.assert_close(a, c, rtol=1e-3, atol=1e-3, msg=lambda m: f"step {step}: {m}")
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=lambda m: f"step {step}, again: {m}")
    finally:
        for key, value in saved.items():
            setattr(family, key, value)
        torch._dynamo.reset()


@pytest.mark.gpu
def test_cuda_graph_decoding_of_a_bf16_policy_with_float32_adapters(monkeypatch):
    """The combination GRPO trains on a GPU: a bf16 Liger-patched model, float32 LoRA adapters cast once a batch
    (models/lora_compute.adapters_cast_once) and Liger's kernels in the captured step: one capture replayed, the
    logits at every step those of the eager static cache casting at every call, also after an optimizer's in-place
    update of the adapters (seen by the replays of the next batch)."""
    pytest.importorskip("liger_kernel")
    import sys

    from peft import LoraConfig, get_peft_model

    from swiftlike.infer import static_cache
    from swiftlike.models import build_miniature, kernels
    from swiftlike.models.lora_compute import compute_in_stream_dtype
    from swiftlike.rollout import hf

    base = build_miniature("Qwen/Qwen3-0.6B", dtype=torch.bfloat16).cuda()
    family = sys.modules[type(base).__module__]
    saved = dict(vars(family))
    static_cache.COUNTS.clear()
    try:
        assert kernels.apply(base) is None
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
        lora = [p for name, p in model.named_parameters() if "lora_" in name]
        assert lora and all(p.dtype == torch.float32 for p in lora)
        with torch.no_grad():
            for p in lora:
                p.normal_(0, 0.5)  # as if trained
        assert compute_in_stream_dtype(model) == 14
        model.eval()
        graph, eager = hf.HFRollout(model, 0), hf.HFRollout(model, 0, decode="eager")
        for update in (False, True):
            if update:
                with torch.no_grad():
                    for p in lora:
                        p.mul_(-1.5)  # in place, as an optimizer step
            reference = _trace_casting_at_every_call(monkeypatch, eager)
            for step, (a, b) in enumerate(zip(_logit_trace(graph, ROWS), reference, strict=True)):
                torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2, msg=lambda m: f"update {update}, {step}: {m}")
        assert static_cache.COUNTS["captures"] == 1 and static_cache.COUNTS["replays"] == 19, static_cache.COUNTS
    finally:
        for key, value in saved.items():
            setattr(family, key, value)


SYNCS = ("item", "_local_scalar_dense", "nonzero", "tolist", "masked_select", "unique")  # device-to-host reads


def test_static_decode_step_is_one_graph_for_every_token_and_batch():
    """What CUDA graphs need: the decode step traces into a single graph (fullgraph: no graph break) with no
    device-to-host read in it, and every later token and every batch of the same shape reuses it (no
    recompilation): the torch.compile route to CUDA graphs (`decode=dict(...)`), kept beside the default capture."""
    from swiftlike.rollout.hf import HFRollout

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model = _varlen_lora_model()
    rollout = HFRollout(model, 0, static_cache=True, decode=dict(backend=backend, fullgraph=True, dynamic=False))
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


def _traced_recorder(rollout):
    """A CPU stand-in for CUDA graph capture: the step traced to aten operations (make_fx), which, as a captured
    graph does, reads and writes every tensor at the address it had and freezes every Python value met while
    tracing. Tracing runs the step, which capture does not: the cache is put back as it was after it."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def record(step, device):
        cache = rollout.static._cache
        saved = [(t, t.clone()) for layer in cache.layers for t in (layer.keys, layer.values,
                                                                     layer.cumulative_length)]
        traced = make_fx(step)()
        for tensor, before in saved:
            tensor.copy_(before)
        return traced

    return record


def _graph_rollout(model):
    from swiftlike.infer.static_cache import StaticDecode
    from swiftlike.rollout.hf import HFRollout

    rollout = HFRollout(model, 0, static_cache=True)
    rollout.static = StaticDecode(model, rollout._call, "graph", record=_traced_recorder(rollout))
    return rollout


def _assert_traces_equal(a, b, what, tolerance=1e-5):
    for step, (x, y) in enumerate(zip(a, b, strict=True)):
        torch.testing.assert_close(x, y, rtol=tolerance, atol=tolerance, msg=lambda m: f"{what}, step {step}: {m}")


def _bf16_policy(seed=0):
    """A bf16 LoRA policy as training builds it: float32 adapters computing in the bf16 stream."""
    from swiftlike.models.lora_compute import compute_in_stream_dtype

    model = _lora_model(seed)
    for name, p in model.named_parameters():
        if "lora_" not in name:
            p.data = p.data.to(torch.bfloat16)
    assert compute_in_stream_dtype(model) == 14
    return model


def test_rollouts_cast_a_bf16_policys_float32_adapters_once_per_batch(monkeypatch):
    """While a rollout decodes, the adapters are cast to bf16 once per batch, not in every layer at every token: the
    recorded step holds 2 casts fewer per adapted layer, reads the casts in place (an optimizer's update between
    rollouts is seen by the replays), and gives the logits of casting at every call. Outside a rollout, and inside
    with autograd on (training), the float32 adapters are read and trained as before; checkpoints hold no casts."""
    from swiftlike.infer import static_cache
    from swiftlike.models.lora_compute import adapters_cast_once
    from swiftlike.rollout import hf

    def traced_steps(rollout):
        steps = []
        record = rollout.static.record
        rollout.static.record = lambda step, device: steps.append(record(step, device)) or steps[-1]
        return steps

    def casts(graph):
        return sum(node.target is torch.ops.aten._to_copy.default for node in graph.graph.nodes)

    model = _bf16_policy()
    once, each_call = _graph_rollout(model), _graph_rollout(model)
    recorded_once, recorded_each = traced_steps(once), traced_steps(each_call)
    static_cache.COUNTS.clear()
    _assert_traces_equal(_logit_trace(once, ROWS), _trace_casting_at_every_call(monkeypatch, each_call), "cast once", 0)
    assert casts(recorded_each[0]) - casts(recorded_once[0]) == 2 * 14
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(-2.0)  # in place, as an optimizer step
    eager = _trace_casting_at_every_call(monkeypatch, hf.HFRollout(model, 0, static_cache=True))
    _assert_traces_equal(_logit_trace(once, ROWS), eager, "after an update in place", 0)
    assert len(recorded_once) == 1 and static_cache.COUNTS["captures"] == 2  # (the same graph, replayed)
    assert not any("wb_cast" in key for key in model.state_dict())
    ids = torch.tensor([ROWS[0]])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.mul_(3.0)  # after the rollout: a forward outside one reads the adapters themselves
    fresh = _bf16_policy()
    with torch.no_grad():
        for p, q in zip(fresh.parameters(), model.parameters()):
            p.copy_(q)
        torch.testing.assert_close(model(input_ids=ids).logits, fresh(input_ids=ids).logits, rtol=0, atol=0)
    model.train()
    with adapters_cast_once(model):  # autograd on inside: the float32 adapters are read and trained
        model(input_ids=ids, labels=ids).loss.backward()
    fresh.train()
    fresh(input_ids=ids, labels=ids).loss.backward()
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        if "lora_" in name:
            assert p.dtype == torch.float32 and p.grad is not None, name
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("decode, synced, unfused", [("graph", False, False), ("eager", False, False),
                                                    (dict(backend="cudagraphs"), False, True), ("eager", True, False)])
def test_what_a_rollout_batch_decodes_with(monkeypatch, decode, synced, unfused):
    """Liger's Triton kernels (CUDA training's default) stay in a decode step captured directly or run eagerly —
    fewer kernels a token, the training forward's numerics; torch.compile cannot read them, so a step it compiles
    decodes with transformers' own modules (models/kernels.unfused). LoRA adapters are cast once a batch unless the
    weights are sharded (synced rollouts: FSDP2 gathers them inside each forward)."""
    from swiftlike.infer.decode import left_pad
    from swiftlike.infer.static_cache import StaticDecode
    from swiftlike.rollout import hf

    entered = []
    monkeypatch.setattr(hf, "unfused", lambda model: entered.append("unfused") or contextlib.nullcontext())
    monkeypatch.setattr(hf, "adapters_cast_once", lambda model: entered.append("cast") or contextlib.nullcontext())
    model = _lora_model()
    rollout = hf.HFRollout(model, 0, static_cache=True, synced=synced)
    rollout.static = StaticDecode(model, rollout._call, decode)
    with torch.no_grad(), rollout.decoding(*left_pad(ROWS, 0, "cpu"), 4):
        pass
    assert entered == ["cast"] * (not synced) + ["unfused"] * unfused


def test_recorded_decode_step_replays_the_eager_step():
    """The CUDA default ("graph": the step captured once per cache, infer/static_cache.py), with a stand-in for
    capture that, like it, freezes addresses and Python values: the first token of a cache runs eagerly, the
    second is captured, every later token and every batch of that shape replays the recording, and the logits
    equal the eager static cache's at every step. Weights updated in place (the optimizer) are read by the
    replay; weights moved to new tensors are noticed at the next batch and the step captured again; another batch
    shape gets its own cache and capture."""
    from swiftlike.infer import static_cache
    from swiftlike.rollout.hf import HFRollout

    model = _varlen_lora_model()
    rows, other = ROWS, [[20, 21], [22, 23, 24], [25]]
    graph, eager = _graph_rollout(model), HFRollout(model, 0, static_cache=True)
    static_cache.COUNTS.clear()
    _assert_traces_equal(_logit_trace(graph, rows), _logit_trace(eager, rows), "first batch")
    assert dict(static_cache.COUNTS) == {"eager": 11, "captures": 1, "replays": 9}  # (11: the eager rollout's 10)
    _assert_traces_equal(_logit_trace(graph, other), _logit_trace(eager, other), "same shape")
    assert static_cache.COUNTS["captures"] == 1 and static_cache.COUNTS["replays"] == 19
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    with torch.no_grad():
        for p in lora_b:
            p.mul_(1.5)  # in place, as an optimizer step
    _assert_traces_equal(_logit_trace(graph, rows), _logit_trace(eager, rows), "weights updated in place")
    assert static_cache.COUNTS["captures"] == 1
    for p in lora_b:
        p.data = p.data * 0.5  # new tensors: the recording would read the old ones
    _assert_traces_equal(_logit_trace(graph, rows), _logit_trace(eager, rows), "weights moved")
    assert static_cache.COUNTS["captures"] == 2
    _assert_traces_equal(_logit_trace(graph, rows[:2]), _logit_trace(eager, rows[:2]), "two rows")
    assert static_cache.COUNTS["captures"] == 3
    growing = _logit_trace(HFRollout(model, 0, static_cache=False), rows)
    _assert_traces_equal(_logit_trace(graph, rows), growing, "against the growing cache", 1e-4)


@pytest.mark.parametrize("model_id, recorded", [
    ("Qwen/Qwen3-30B-A3B", True), ("mistralai/Mixtral-8x7B-Instruct-v0.1", True), ("deepseek-ai/DeepSeek-V3", True),
    ("microsoft/Phi-3.5-mini-instruct", False), ("google/gemma-2-2b-it", False)])
def test_recorded_decode_across_families(model_id, recorded):
    """Mixture-of-experts routing (Qwen3-MoE, Mixtral, DeepSeek-V3 with latent attention) records and replays the
    growing cache's logits; families with sliding-window cache layers (Phi-3.5, Gemma-2) decode eagerly, with the
    same logits."""
    from swiftlike.infer import static_cache
    from swiftlike.rollout.hf import HFRollout

    model = _family_model(model_id)
    static_cache.COUNTS.clear()
    graph = _logit_trace(_graph_rollout(model), ROWS)
    assert static_cache.COUNTS["captures"] == int(recorded), static_cache.COUNTS
    _assert_traces_equal(graph, _logit_trace(HFRollout(model, 0, static_cache=False), ROWS), model_id, 1e-4)


def test_decode_steps_a_graph_cannot_hold_run_eagerly(capsys):
    """What a captured graph would freeze wrongly or cannot capture is found in the first, eager step and the
    step then stays eager, said once: sliding-window cache layers, which count their slots in a Python int (the
    stand-in replays such a recording wrongly: checked), and a model that reads a device value on the host."""
    from swiftlike.infer import static_cache
    from swiftlike.rollout.hf import HFRollout

    gemma = _family_model("google/gemma-3-1b-it", sliding_window=4)  # decoding fills the window, then moves it
    short = [[13, 14], [15], [16, 17]]
    growing = _logit_trace(HFRollout(gemma, 0, static_cache=False), short)
    static_cache.COUNTS.clear()
    _assert_traces_equal(_logit_trace(_graph_rollout(gemma), short), growing, "sliding window", 1e-4)
    assert static_cache.COUNTS["captures"] == 0 and static_cache.COUNTS["replays"] == 0
    said = capsys.readouterr().out
    assert said.count("[wb] decode:") == 1 and "StaticSlidingWindowLayer" in said, said
    forced = _graph_rollout(gemma)  # what the check prevents: the recording keeps writing where the window was
    forced.static._warm_up = lambda: (forced.static._decode(*forced.static._inputs), "")
    with pytest.raises(IndexError, match="out of bounds"):
        _logit_trace(forced, short)

    model = _varlen_lora_model()
    norm = model.get_base_model().model.norm
    plain = norm.forward
    norm.forward = lambda x: plain(x) * float(x.abs().amax() >= 0)  # a host read of a device value
    eager = _logit_trace(HFRollout(model, 0, static_cache=True), ROWS)
    static_cache.COUNTS.clear()
    _assert_traces_equal(_logit_trace(_graph_rollout(model), ROWS), eager, "host read")
    assert static_cache.COUNTS["captures"] == 0
    said = capsys.readouterr().out
    assert said.count("[wb] decode:") == 1 and "_local_scalar_dense" in said, said


@pytest.mark.parametrize("step, said", [
    (lambda x: (x * 2).sum(-1), ""),
    (lambda x: x[x > 0], "boolean mask"),
    (lambda x: x + float(x.amax()), "_local_scalar_dense"),
    (lambda x: x + torch.tensor([1.0, 2.0, 3.0]), "lift_fresh"),
    (lambda x: x.to("meta"), "copies between devices"),
    (lambda x: x[0, :2].repeat_interleave(torch.ones(2, dtype=torch.long)), "repeat_interleave"),
    (lambda x: torch.ones(2, 3, device="meta") * torch.ones(()), ""),  # a 0-dim host tensor goes as a value
], ids=["plain", "bool-mask", "item", "from-python", "device-copy", "repeat-interleave", "host-scalar"])
def test_what_a_cuda_graph_cannot_hold_is_found(step, said):
    """The check of a cache's first, eager decode step (infer/static_cache.py): what capture would refuse or
    freeze wrongly is named; plain device work passes."""
    from swiftlike.infer.static_cache import _HostReads

    x = torch.randn(2, 3)
    with _HostReads() as seen:
        step(x)
    assert (said in seen.why) if said else seen.why == "", seen.why


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
        # a payload whose shapes do not fit is refused whole (copy_ broadcast a smaller tensor over a weight, and
        # a payload could apply in part); a failure is answered, not a dropped connection ("not answering")
        from swiftlike.rollout.weights import to_bytes

        before = _logits(engine.model)
        norm = "model.norm.weight"
        with pytest.raises(UserError, match=r"HTTP 400.*shape \(3,\)"):
            client._call("POST", "/update_weights", to_bytes([("model.layers.0.mlp.up_proj.weight",
                                                                torch.zeros_like(dict(engine.model.named_parameters())[
                                                                    "model.layers.0.mlp.up_proj.weight"])),
                                                               (norm, torch.zeros(3))]), "application/octet-stream")
        assert torch.equal(_logits(engine.model), before)
        with pytest.raises(UserError, match="HTTP 400.*n must be at least 1"):
            client.generate([[100]], 0, s)
        with pytest.raises(UserError, match="HTTP 400.*outside the vocabulary"):
            client.generate([[10 ** 9]], 1, s)
        def broken(*a):
            raise RuntimeError("CUDA error: device-side assert triggered (simulated)")
        generate, engine.generate = engine.generate, broken
        with pytest.raises(UserError, match="HTTP 500.*RuntimeError: CUDA error"):
            client.generate([[100]], 1, s)
        engine.generate = generate
        import swiftlike.rollout.client as client_module

        def no_waiting(_):
            raise AssertionError("retried an answer that was an error")
        original_sleep = client_module.time.sleep
        client_module.time.sleep = no_waiting
        try:  # something else answers there (HTTP 404): said at once, not after --wait of retries
            with pytest.raises(UserError, match="HTTP 404"):
                ServerRollout(f"http://127.0.0.1:{server.server_port}/elsewhere", wait=600)
        finally:
            client_module.time.sleep = original_sleep
    finally:
        server.shutdown()


def test_client_reports_a_missing_server():
    from swiftlike.errors import UserError
    from swiftlike.rollout.client import ServerRollout

    with pytest.raises(UserError, match="not answering.*wb rollout"):
        ServerRollout("http://127.0.0.1:9", wait=0)


def test_client_says_a_slow_answer_is_slow_not_missing():
    """A generation longer than the client's timeout was reported as "not answering; start one"."""
    import http.server
    import threading
    import time

    from swiftlike.errors import UserError
    from swiftlike.rollout import Sampling
    from swiftlike.rollout.client import NotAnswering, ServerRollout

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(1.0)

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ServerRollout(f"http://127.0.0.1:{server.server_address[1]}", timeout=0.3, wait=0)
        with pytest.raises(UserError, match=r"/generate: no answer within 0.3 s \(it is up") as caught:
            client.generate([[1, 2]], 2, Sampling(max_tokens=4))
        assert not isinstance(caught.value, NotAnswering)
    finally:
        server.shutdown()


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


def test_sampler_extremes_are_greedy_not_garbage():
    """A temperature or top_p near 0 picks the most likely token (they once gave NaN probabilities -> an id past
    the vocabulary, and an all-masked row -> token 0)."""
    from swiftlike.rollout.hf import sample_next

    logits = torch.tensor([[0.0, 3.0, 1.0, -2.0]]).repeat(50, 1)
    g = torch.Generator().manual_seed(2)
    for sampling in (Sampling(temperature=1e-300), Sampling(temperature=1e-30), Sampling(top_p=1e-300),
                     Sampling(top_p=1e-30, top_k=2)):
        assert sample_next(logits, sampling, g).tolist() == [1] * 50, sampling


def test_repetition_penalty():
    from swiftlike.rollout.hf import penalize_repeats

    out = penalize_repeats(torch.tensor([[2.0, -2.0, 1.0]]), torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]

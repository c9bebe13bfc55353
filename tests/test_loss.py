"""The loss module equals transformers' own causal-LM loss; chunking and packing change nothing."""
import pytest
import torch

from swiftlike.data.collate import collate_padded, collate_padding_free
from swiftlike.models import build_miniature
from swiftlike.templates import IGNORE_INDEX
from swiftlike.train.loss import CausalLMLoss, linear_cross_entropy, tensor_cores


def _rows():
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in (7, 12, 5):
        ids = torch.randint(0, 5000, (n,), generator=g).tolist()
        labels = [IGNORE_INDEX] * 3 + ids[3:]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 5, 37, 100])
def test_fused_linear_cross_entropy_matches_plain_loss_and_gradients(bias, chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias)
    h = torch.randn(37, 16, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    ref = torch.nn.functional.cross_entropy(head(h), t, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 0.5, [h, *head.parameters()])
    ours = linear_cross_entropy(head, h, t, chunk)
    grads = torch.autograd.grad(ours * 0.5, [h, *head.parameters()])
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tensor_cores_only_for_16_bit_cuda_inputs_and_the_setting_is_restored():
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    for source in (torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16)):  # off CUDA: nothing changes
        with tensor_cores(source):
            assert matmul.fp32_precision == before
    if torch.cuda.is_available():
        with tensor_cores(torch.zeros(2, device="cuda")):  # fp32 training keeps IEEE fp32
            assert matmul.fp32_precision == before
        for dtype in (torch.bfloat16, torch.float16):
            with tensor_cores(torch.zeros(2, dtype=dtype, device="cuda")):
                assert matmul.fp32_precision == "tf32"
            assert matmul.fp32_precision == before


@pytest.mark.gpu
def test_a_trained_bf16_heads_weight_gradient_in_tf32_is_as_close_as_bf16_training_allows():
    """The output layer's fp32 weight gradient, accumulated over chunks in TF32 on the GPU, against float64: within
    the distance of the same gradient computed on the CPU from the same bf16 inputs in IEEE fp32, times 4."""
    torch.manual_seed(0)
    head = torch.nn.Linear(256, 4096, bias=False).to(torch.bfloat16)
    h = torch.randn(600, 256, dtype=torch.bfloat16)
    t = torch.randint(0, 4096, (600,))
    exact = torch.func.grad(lambda w: torch.nn.functional.cross_entropy(h.double() @ w.T, t, reduction="sum"))(
        head.weight.double())
    cpu = torch.autograd.grad(linear_cross_entropy(head, h, t, 64), head.weight)[0].double()
    cuda_head = head.cuda()
    gpu = torch.autograd.grad(linear_cross_entropy(cuda_head, h.cuda(), t.cuda(), 64), cuda_head.weight)[0]
    # (the gradient is returned in the head's dtype, bf16: both sides round it alike)
    assert (gpu.double().cpu() - exact).abs().max() <= 4 * (cpu - exact).abs().max() + 1e-6


def test_frozen_head_gets_no_gradient_and_no_grad_mode_works():
    head = torch.nn.Linear(8, 20, bias=False).requires_grad_(False)
    h = torch.randn(5, 8, requires_grad=True)
    t = torch.randint(0, 20, (5,))
    linear_cross_entropy(head, h, t).backward()
    assert head.weight.grad is None and h.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(head, h, t),
                                   torch.nn.functional.cross_entropy(head(h), t, reduction="sum"))


def test_loss_equals_transformers_loss_per_sequence():
    model = build_miniature("Qwen/Qwen3-0.6B").eval()
    loss_module = CausalLMLoss(model)
    for row in _rows():
        ids = torch.tensor([row["input_ids"]])
        ref = model(input_ids=ids, labels=torch.tensor([row["labels"]])).loss
        batch = collate_padding_free([row])
        total, n, _ = loss_module(**batch)
        torch.testing.assert_close(total / n, ref, rtol=1e-5, atol=1e-6)


def test_packed_padded_and_separate_sequences_agree():
    model = build_miniature("Qwen/Qwen3-0.6B").eval()
    loss_module = CausalLMLoss(model)
    rows = _rows()
    packed, n_packed, _ = loss_module(**collate_padding_free(rows))
    padded, n_padded, _ = loss_module(**collate_padded(rows, pad_id=0))
    separate = [loss_module(**collate_padding_free([r]))[:2] for r in rows]
    assert int(n_packed) == int(n_padded) == sum(len(r["input_ids"]) - 3 for r in rows) == 15
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed, sum(s for s, _ in separate), rtol=1e-5, atol=1e-5)
    assert int(n_packed) == sum(int(n) for _, n in separate)


def test_targets_never_cross_sequence_borders():
    rows = _rows()
    batch = collate_padding_free(rows)
    borders = torch.cumsum(batch["seq_lens"], 0) - 1
    assert (batch["targets"][0, borders] == IGNORE_INDEX).all()
    assert batch["position_ids"][0].tolist() == [i for r in rows for i in range(len(r["input_ids"]))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_token_logps_fused_path_matches_autograd(dtype):
    """The frozen-head path (gradient formed in forward) equals log_softmax + autograd, values and gradients."""
    from swiftlike.train.loss import token_logps

    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).to(dtype).requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(50, 16, generator=g, dtype=dtype))
    hidden = torch.randn(13, 16, generator=g, dtype=dtype)
    targets = torch.randint(0, 50, (13,), generator=g)
    upstream = torch.randn(13, generator=g, dtype=torch.float32)
    a, b = hidden.clone().requires_grad_(True), hidden.clone().requires_grad_(True)
    fused = token_logps(head, a, targets, chunk_size=4)
    (fused * upstream).sum().backward()
    plain = torch.log_softmax(head(b).float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    (plain * upstream).sum().backward()
    assert torch.allclose(fused, plain, atol=1e-5)
    assert torch.allclose(a.grad, b.grad, atol=1e-5)
    head.weight.requires_grad_(True)                      # a trainable head takes the recomputing path
    c = hidden.clone().requires_grad_(True)
    (token_logps(head, c, targets, chunk_size=4) * upstream).sum().backward()
    assert torch.allclose(c.grad, b.grad, atol=1e-5) and head.weight.grad is not None


@pytest.mark.parametrize("frozen", [False, True])
def test_soft_capped_logits_fused_paths_match_plain_autograd(frozen):
    """Gemma-2 caps its final logits (cap * tanh(z / cap)); the fused loss and log-prob paths apply it too."""
    from swiftlike.train.loss import token_logps

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).requires_grad_(not frozen)
    h = torch.randn(9, 16, requires_grad=True) * 4
    h.retain_grad()
    t = torch.randint(0, 50, (9,))
    capped = torch.tanh(head(h) / 3.0) * 3.0
    ref_ce = torch.nn.functional.cross_entropy(capped, t, reduction="sum")
    ref_lp = torch.log_softmax(capped, -1).gather(-1, t[:, None]).squeeze(-1)
    params = [h] + ([] if frozen else [head.weight])
    ref_grads = torch.autograd.grad(ref_ce + ref_lp.square().sum(), params)
    ours_ce = linear_cross_entropy(head, h, t, 4, softcap=3.0)
    ours_lp = token_logps(head, h, t, 4, softcap=3.0)
    torch.testing.assert_close(ours_ce, ref_ce)
    torch.testing.assert_close(ours_lp, ref_lp)
    for a, b in zip(torch.autograd.grad(ours_ce + ours_lp.square().sum(), params), ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gemma2_loss_equals_the_models_own_soft_capped_loss():
    model = build_miniature("google/gemma-2-2b-it")
    assert model.config.final_logit_softcapping
    rows = _rows()
    batch = collate_padded(rows, pad_id=0)
    ours, n, _ = CausalLMLoss(model)(**batch)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    ref = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1).float(), batch["targets"].flatten(),
                                            ignore_index=IGNORE_INDEX, reduction="sum")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("model_id", ["google/gemma-3-1b-it", "google/gemma-2-2b-it"])
def test_padding_free_honours_sliding_windows(model_id):
    """Sequences longer than the sliding window: packed hidden states equal each sequence run on its own."""
    model = build_miniature(model_id)
    model.config.sliding_window = 6
    model.get_decoder().config.sliding_window = 6
    assert "sliding_attention" in model.get_decoder().config.layer_types
    rows = _rows()
    loss = CausalLMLoss(model)
    packed = collate_padding_free(rows)
    hidden = loss.hidden_states(packed["input_ids"], packed["position_ids"], seq_lens=packed["seq_lens"])[0]
    alone = torch.cat([loss.hidden_states(torch.tensor([r["input_ids"]]))[0] for r in rows])
    torch.testing.assert_close(hidden, alone, rtol=1e-4, atol=1e-4)

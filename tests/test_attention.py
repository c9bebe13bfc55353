"""The attention choice (models/attention.py): padding-free rows through the variable-length path equal the block-mask
path (loss and gradients), KV-cached generation with left padding through its fallback equals sdpa's, and the
choice follows the device, the batches and the model. The CUDA kernel (torch's varlen_attn) is compared with the
same reference in the GPU-marked test, skipped without CUDA."""
import pytest
import torch

from conftest import needs_av
from swiftlike.data.collate import collate_padding_free
from swiftlike.models import attention
from swiftlike.models.loader import build_miniature
from swiftlike.train.loss import CausalLMLoss

MODELS = ["Qwen/Qwen3-0.6B", "meta-llama/Llama-3.2-1B-Instruct"]


def _rows(vocab: int, lengths=(7, 19, 3, 12)):
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in lengths:
        ids = torch.randint(5, vocab, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (n // 3) + ids[n // 3:], "length": n})
    return rows


def _twin(model_id: str, impl: str, device="cpu", dtype=torch.float32):
    attention.register()
    model = build_miniature(model_id, dtype=dtype).to(device)
    model.config._attn_implementation = impl
    return model


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss, n, _ = CausalLMLoss(model)(**batch)
    loss.backward()
    return float(loss.detach()), int(n), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_id", MODELS)
def test_varlen_equals_the_block_mask_on_padding_free_rows(model_id):
    sdpa, varlen = _twin(model_id, "sdpa"), _twin(model_id, attention.VARLEN)
    batch = collate_padding_free(_rows(sdpa.config.vocab_size))
    calls = []
    original = attention._kernel
    attention._kernel = lambda *a: calls.append(a[3].tolist()) or original(*a)
    try:
        b_loss, b_n, b_grads = _loss_and_grads(varlen, batch)
    finally:
        attention._kernel = original
    a_loss, a_n, a_grads = _loss_and_grads(sdpa, batch)
    assert calls and calls[0] == [0, 7, 26, 29, 41]  # the sequence borders, read from position_ids
    assert a_n == b_n and b_loss == pytest.approx(a_loss, rel=1e-5)
    assert a_grads.keys() == b_grads.keys()
    for name, grad in a_grads.items():
        torch.testing.assert_close(b_grads[name], grad, rtol=1e-4, atol=5e-5)


def test_the_loss_hands_every_layer_the_borders_computed_once(monkeypatch):
    """Derived from position_ids in each layer, the borders would make every layer wait for the GPU (three
    device-to-host reads a layer); the loss computes them once and transformers hands them to every layer."""
    varlen = _twin(MODELS[0], attention.VARLEN)
    batch = collate_padding_free(_rows(varlen.config.vocab_size))
    derived, seen = [], []
    monkeypatch.setattr(attention, "_borders", lambda *a: derived.append(a))
    original = attention._kernel
    monkeypatch.setattr(attention, "_kernel", lambda *a: seen.append((a[3].tolist(), a[6])) or original(*a))
    CausalLMLoss(varlen)(**batch)[0].backward()
    assert not derived and seen == [([0, 7, 26, 29, 41], 19)] * varlen.config.num_hidden_layers


def test_the_padded_fallback_generates_as_sdpa_with_left_padding_and_a_cache():
    sdpa, varlen = _twin(MODELS[0], "sdpa"), _twin(MODELS[0], attention.VARLEN)
    ids = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    outs = [m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
            for m in (sdpa, varlen)]
    assert torch.equal(outs[0], outs[1])


@needs_av
@pytest.mark.parametrize("name", ["qwen2_5_vl", "qwen3_vl"])
def test_vision_language_models_read_videos_images_and_text_alike_through_varlen(name, qwen3_tokenizer):
    """The language model's attention goes through varlen; the vision tower's (not causal) stays sdpa's."""
    from swiftlike.data.collate import ImageCollate, collate_padded
    from swiftlike.data.dataset import encode_rows
    from swiftlike.data.formats import to_canonical
    from test_multimodal_video import MODELS as VL, _rows, vl_template

    template = vl_template(VL[name], qwen3_tokenizer)
    encoded, _ = encode_rows([to_canonical(r) for r in _rows()], template, 4096)
    image_pad, span = template.image_token_ids
    losses = []
    for impl in ("sdpa", attention.VARLEN):
        net = _twin(VL[name], impl).eval()
        for collate in (collate_padding_free, lambda r: collate_padded(r, qwen3_tokenizer.pad_token_id)):
            batch = ImageCollate(collate, template.image_processing, image_pad, span,
                                 video_pad_id=template.video_token_id)(encoded)
            with torch.no_grad():
                losses.append(float(CausalLMLoss(net)(**batch)[0]))
    assert losses[1:] == pytest.approx(losses[:1] * 3, rel=1e-5)


class _Config:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.mark.parametrize("requested, device, padding_free, config, expected", [
    ("eager", "cuda", True, _Config(), "eager"),
    (None, "cpu", True, _Config(), attention.VARLEN),
    (None, "mps", True, _Config(), None),
    (None, "cpu", False, _Config(), None),
    (None, "cpu", True, _Config(attn_logit_softcapping=50.0), None),
    (None, "cuda", False, _Config(), None),
    (None, "cuda", True, _Config(), attention.VARLEN),
    (None, "cuda", True, _Config(sliding_window=4096, layer_types=["sliding_attention", "full_attention"]), None),
    (None, "cuda", True, _Config(sliding_window=4096, use_sliding_window=False), attention.VARLEN),
    (None, "cuda", True, _Config(attn_logit_softcapping=50.0), None),
])
def test_the_choice_follows_device_batches_and_model(monkeypatch, requested, device, padding_free, config, expected):
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: None)  # no flash_attn package
    impl, why = attention.choose(requested, device, padding_free, config)
    assert impl == expected and why


def test_an_npu_in_half_precision_gets_its_fused_varlen_kernel_through_flash_attention_2(monkeypatch):
    """transformers runs flash_attention_2 on an Ascend NPU with torch_npu's npu_fusion_attention (no flash_attn
    package); fp32, which that kernel does not take, keeps the block mask, and the user's choice wins."""
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: None)
    for dtype in (torch.bfloat16, torch.float16):
        impl, why = attention.choose(None, "npu", True, _Config(), dtype)
        assert impl == "flash_attention_2" and "npu_fusion_attention" in why
    assert attention.choose(None, "npu", True, _Config(), torch.float32) == (
        None, "padding-free on npu: sdpa with a block-diagonal mask")
    assert attention.choose(None, "npu", False, _Config())[0] is None
    assert attention.choose(None, "npu", True, _Config(attn_logit_softcapping=50.0))[0] is None
    assert attention.choose("sdpa", "npu", True, _Config()) == ("sdpa", "--attn_implementation")


def test_flash_attention_2_is_chosen_where_its_package_is_installed(monkeypatch):
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: object())
    assert attention.choose(None, "cuda", True, _Config())[0] == "flash_attention_2"
    # flash-attention kernels take bf16/fp16 only: an fp32 run gets the per-sequence sdpa calls
    assert attention.choose(None, "cuda", True, _Config(), torch.float32)[0] == attention.VARLEN


def test_the_fused_varlen_kernel_takes_half_precision_cuda_tensors_without_dropout_only():
    from types import SimpleNamespace

    def t(cuda=True, dtype=torch.bfloat16, dim=64):
        return SimpleNamespace(is_cuda=cuda, dtype=dtype, shape=(41, 4, dim))

    fits = attention.fused_varlen_fits
    assert fits(t(), t(), 0.0) and fits(t(dtype=torch.float16), t(dtype=torch.float16), 0.0)
    assert fits(t(dim=192), t(dim=128), 0.0)  # multi-head latent attention: v is zero-padded
    assert not fits(t(dtype=torch.float32), t(dtype=torch.float32), 0.0)  # "FlashAttention only supports fp16/bf16"
    assert not fits(t(cuda=False), t(cuda=False), 0.0) and not fits(t(), t(), 0.1)
    assert not fits(t(dim=64), t(dim=128), 0.0)


def test_a_narrower_value_head_is_zero_padded_for_the_fused_kernel_and_cut_back(monkeypatch):
    """DeepSeek's multi-head latent attention has 192-wide query/key heads and 128-wide value heads; the varlen
    kernel takes one head size ("v must have shape (total_k, num_heads_k, head_size_og)" on an H100)."""
    import torch.nn.attention.varlen as varlen_module

    def one_head_size(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                      window_size=(-1, -1), enable_gqa=False):
        assert value.shape[-1] == query.shape[-1] and window_size == (-1, 0)
        outs = []
        for a, b in zip(cu_seq_q[:-1].tolist(), cu_seq_q[1:].tolist()):
            seq = [x[None, a:b].transpose(1, 2) for x in (query, key, value)]
            outs.append(torch.nn.functional.scaled_dot_product_attention(
                *seq, is_causal=True, scale=scale, enable_gqa=enable_gqa)[0].transpose(0, 1))
        return torch.cat(outs)

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(41, 4, 24, generator=g), torch.randn(41, 2, 24, generator=g)
    v = torch.randn(41, 2, 16, generator=g)
    borders = torch.tensor([0, 7, 26, 29, 41], dtype=torch.int32)
    expected = attention._kernel(q, k, v, borders, 0.2, 0.0)  # per-sequence sdpa, which takes the narrower v
    monkeypatch.setattr(attention, "fused_varlen_fits", lambda q, v, dropout: True)
    monkeypatch.setattr(varlen_module, "varlen_attn", one_head_size)
    out = attention._kernel(q, k, v, borders, 0.2, 0.0)
    assert out.shape == (41, 4, 16)
    torch.testing.assert_close(out, expected)


def assert_matches(reference, candidate, exact=None):
    """`candidate` computes the loss and gradients of `reference` (each a _loss_and_grads result). In fp32 (`exact`
    None): within 1e-4. In bf16 two correct kernels differ by their rounding, so each is measured against `exact`,
    the same computation in fp32 from the same weights: the candidate's loss and each of its gradients (relative
    Frobenius distance) are no further from it than twice the reference's distance, plus 1e-2 (bf16 rounds at
    4e-3; a wrong kernel — attention across a border — is off by order 1)."""
    (a_loss, a_n, a_grads), (b_loss, b_n, b_grads) = reference, candidate
    assert a_n == b_n and a_grads.keys() == b_grads.keys()
    if exact is None:
        assert b_loss == pytest.approx(a_loss, rel=1e-4)
        for name, grad in a_grads.items():
            torch.testing.assert_close(b_grads[name], grad, rtol=1e-4, atol=1e-4, msg=name)
        return
    e_loss, _, e_grads = exact

    def off(grads, name):
        return float((grads[name].float() - e_grads[name]).norm() / e_grads[name].norm().clamp_min(1e-12))

    assert abs(b_loss - e_loss) <= 2 * abs(a_loss - e_loss) + 1e-3 * abs(e_loss)
    for name in a_grads:
        assert off(b_grads, name) <= 2 * off(a_grads, name) + 1e-2, (name, off(b_grads, name), off(a_grads, name))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_varlen_kernel_equals_the_block_mask(dtype):
    """fp32: the per-sequence sdpa calls (flash-attention takes bf16/fp16 only); bf16: torch's varlen_attn."""
    sdpa = _twin(MODELS[0], "sdpa", "cuda", dtype)
    varlen = _twin(MODELS[0], attention.VARLEN, "cuda", dtype)
    batch = {k: v.cuda() for k, v in collate_padding_free(_rows(sdpa.config.vocab_size, (70, 300, 33, 129))).items()}
    exact = None if dtype == torch.float32 else _loss_and_grads(_twin(MODELS[0], "sdpa", "cuda", dtype).float(), batch)
    assert_matches(_loss_and_grads(sdpa, batch), _loss_and_grads(varlen, batch), exact)


def _cpu_varlen(query, key, value, borders, scale, gqa: bool):
    assert gqa or key.shape[1] == query.shape[1], "heads differ without enable_gqa"
    return attention._kernel(query, key, value, borders, scale, 0.0)  # on CPU: one causal sdpa per sequence


def _torch_2_9(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    assert is_causal
    return _cpu_varlen(query, key, value, cu_seq_q, None, False)


def _torch_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1)):
    assert window_size == (-1, 0)
    return _cpu_varlen(query, key, value, cu_seq_q, scale, False)


def _torch_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    assert window_size == (-1, 0)
    return _cpu_varlen(query, key, value, cu_seq_q, scale, enable_gqa)


@pytest.mark.parametrize("varlen_attn", [_torch_2_9, _torch_2_10, _torch_2_12])
def test_varlen_attn_is_called_in_the_form_each_torch_release_takes(varlen_attn):
    """torch 2.9 takes is_causal and no scale, 2.10-2.11 scale and window_size but no grouped-query attention, 2.12+
    enable_gqa (the GPU machines lent to this project run 2.11): each form computes the same causal attention."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(41, 4, 16, generator=g)
    k, v = torch.randn(41, 2, 16, generator=g), torch.randn(41, 2, 16, generator=g)
    borders = torch.tensor([0, 7, 26, 29, 41], dtype=torch.int32)
    expected = attention._kernel(q, k, v, borders, 0.3, 0.0)
    torch.testing.assert_close(attention.call_varlen(varlen_attn, q, k, v, borders, 19, 0.3), expected)

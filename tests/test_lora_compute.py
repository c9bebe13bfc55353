"""LoRA layers compute in the residual stream's dtype with the adapter's product added inside the last matmul,
their weights and gradients stay float32 (models/lora_compute.py): in bf16 as close to a float32 computation as
peft's float32 branch is, while keeping less for backward than it or torch.autocast; in float32 the same function
to rounding; peft's own forward wherever the layer is not plainly training one adapter."""
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, Qwen3Config

from swiftlike.models.lora_compute import compute_in_stream_dtype, stream_lora_linear

CONFIG = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=32, vocab_size=512)


def _switched(net) -> int:
    return sum(type(m) is stream_lora_linear() for m in net.modules())


def _model(dtype, switch: bool, use_dora: bool = False):
    torch.manual_seed(0)
    net = AutoModelForCausalLM.from_config(Qwen3Config(**CONFIG)).to(dtype)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", use_dora=use_dora,
                      init_lora_weights=False)  # B nonzero: both adapter matrices get gradients
    net = get_peft_model(net, lora)
    if switch:
        compute_in_stream_dtype(net)
    return net


IDS = torch.randint(0, 512, (1, 96), generator=torch.Generator().manual_seed(1))


def _step(net, autocast: bool = False):
    """(loss, adapter gradients, bytes of the distinct storages autograd keeps for backward)."""
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = net(input_ids=IDS, labels=IDS).loss
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    return loss.item(), grads, sum(kept.values())


def test_bf16_keeps_less_than_peft_and_autocast():
    ours = _model(torch.bfloat16, switch=True)
    assert _switched(ours) == 7 * 2  # q, k, v, o, gate, up, down in 2 layers
    assert {p.dtype for p in ours.parameters() if p.requires_grad} == {torch.float32}
    loss, grads, kept = _step(ours)
    ref_loss, ref_grads, autocast_kept = _step(_model(torch.bfloat16, switch=False), autocast=True)
    assert loss == pytest.approx(ref_loss, rel=1e-3)
    assert grads.keys() == ref_grads.keys() and len(grads) == 28
    assert all(g.dtype == torch.float32 for g in grads.values())
    _, _, peft_kept = _step(_model(torch.bfloat16, switch=False))
    # peft's own path keeps a float32 copy of each adapted map's input; autocast keeps bf16 casts of those copies
    assert kept < autocast_kept < peft_kept
    assert peft_kept - kept > 0.2 * peft_kept  # the logits and attention keep the same either way


def test_bf16_gradients_stay_as_close_to_float32_as_peft_default():
    """The bf16 adapters' gradients are as far from a float32 run's as peft's float32 adapter branch is (the
    bf16 base model dominates either way): a wrong cast or a lost gradient would be off by order 1."""
    def distance(grads, ref):
        return max(float((g - ref[n]).norm() / ref[n].norm()) for n, g in grads.items())

    ref = _step(_model(torch.float32, switch=False))[1]
    ours = distance(_step(_model(torch.bfloat16, switch=True))[1], ref)
    peft = distance(_step(_model(torch.bfloat16, switch=False))[1], ref)
    assert ours < 2 * peft + 1e-2 and ours < 0.1


def test_float32_is_the_same_function():
    loss, grads, kept = _step(_model(torch.float32, switch=True))
    ref_loss, ref_grads, ref_kept = _step(_model(torch.float32, switch=False))
    assert loss == pytest.approx(ref_loss, rel=1e-6) and kept <= ref_kept
    for n, g in grads.items():
        torch.testing.assert_close(g, ref_grads[n], rtol=1e-4, atol=1e-6)


def test_peft_forward_where_the_layer_is_not_plainly_training_one_adapter():
    net = _model(torch.bfloat16, switch=True).eval()
    plain = _model(torch.bfloat16, switch=False).eval()
    with torch.no_grad():
        with net.disable_adapter():                       # (DPO's reference: the base model)
            base = net(input_ids=IDS).logits
        with plain.disable_adapter():
            assert torch.equal(base, plain(input_ids=IDS).logits)
        mixed = net(input_ids=IDS, adapter_names=["default"]).logits  # peft's mixed-batch path
        assert torch.equal(mixed, plain(input_ids=IDS, adapter_names=["default"]).logits)
        live = net(input_ids=IDS).logits.float()
        net.merge_adapter()                               # merged: the base layer alone
        merged = net(input_ids=IDS).logits.float()
    assert not torch.equal(live, base.float())
    assert float((merged - live).norm() / live.norm()) < 2e-2


def test_dora_keeps_peft_path():
    net = _model(torch.bfloat16, switch=False, use_dora=True)
    assert compute_in_stream_dtype(net) == 0 and _switched(net) == 0
    assert torch.isfinite(torch.tensor(_step(net)[0]))


def test_saved_adapters_load_in_plain_peft(tmp_path):
    net = _model(torch.bfloat16, switch=True)
    before = {k: v.clone() for k, v in net.state_dict().items() if "lora_" in k}
    net.save_pretrained(tmp_path)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(Qwen3Config(**CONFIG)).to(torch.bfloat16)
    loaded = PeftModel.from_pretrained(base, tmp_path)
    after = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert after[k].dtype == torch.float32 and torch.equal(after[k], v), k
    with torch.no_grad():  # peft's float32 branch there, bf16 here: the same function up to bf16 rounding
        ours, plain = net(input_ids=IDS).logits.float(), loaded(input_ids=IDS).logits.float()
    assert float((ours - plain).norm() / plain.norm()) < 2e-2


def test_training_builds_adapters_that_compute_in_the_stream_dtype(tmp_path):
    from swiftlike.config import SFTConfig
    from swiftlike.pipelines.sft import build_trainable

    class Tokenizer:  # what training reads of one: the padding id and its size (random ids need no more)
        pad_token_id = 0

        def __len__(self):
            return CONFIG["vocab_size"]

    base = tmp_path / "base"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(Qwen3Config(**CONFIG), dtype=torch.bfloat16).save_pretrained(base)
    cfg = SFTConfig(model=str(base), dataset=["-"], output_dir=str(tmp_path / "out"), lora=True,
                    torch_dtype="bfloat16", lora_dropout=0.0)
    net = build_trainable(cfg, Tokenizer(), str(base), None, torch.bfloat16)
    assert _switched(net) == 14
    ids = IDS.to(net.device)  # (training puts the model on the accelerator: a GPU where there is one)
    loss = net(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters() if p.requires_grad)


def test_a_rollouts_cast_adapters_leave_compiled_layers_as_they_were():
    """A rollout between training steps (GRPO) casts the adapters once inside `adapters_cast_once`; a layer compiled
    for training (--torch_compile) is not compiled again after it: its guards on the layer's attributes still hold."""
    from torch._dynamo.utils import counters

    from swiftlike.models.lora_compute import adapters_cast_once

    net = _model(torch.bfloat16, switch=True)
    layer = next(m for m in net.modules() if type(m) is stream_lora_linear())
    assert layer.lora_A["default"].weight.dtype == torch.float32
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(layer, backend="eager")
    x = torch.randn(4, layer.in_features, dtype=torch.bfloat16)
    compiled(x).sum().backward()
    graphs = counters["stats"]["unique_graphs"]
    with adapters_cast_once(net), torch.no_grad():
        inside = layer(x)  # (a rollout runs the layers uncompiled)
    torch.testing.assert_close(inside, compiled(x).detach(), rtol=0, atol=0)
    assert counters["stats"]["unique_graphs"] == graphs == 1
    torch._dynamo.reset()

"""--torch_compile (models/compiled.py): each decoder layer compiled, with and without gradient checkpointing; the
loss and gradients are the eager model's, the layers share one graph, and decoding runs them eagerly."""
import copy

import pytest
import torch
from conftest import logged_steps, wb_cli
from peft import LoraConfig, get_peft_model

import swiftlike as wb
from swiftlike.errors import UserError
from swiftlike.models import kernels
from swiftlike.models.compiled import compile_layers, decoder_layers, uncompiled
from swiftlike.models.loader import build_miniature


def _lora_policy(checkpointing: bool):
    model = build_miniature("Qwen/Qwen3-0.6B")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in model.named_parameters():  # B = 0 at the start would leave A's gradients zero
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model.train()


def _loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_compiled_layers_give_the_eager_loss_and_gradients_in_one_shared_graph(checkpointing):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager = _lora_policy(checkpointing)
    compiled = copy.deepcopy(eager)
    assert compile_layers(compiled, backend="aot_eager") == 2
    keys = set(compiled.state_dict())
    assert keys == set(eager.state_dict())  # a checkpoint of it is a plain PEFT adapter
    generator, graphs = torch.Generator().manual_seed(0), []
    for length in (37, 61):  # a second length: dynamic shapes, no recompilation
        ids = torch.randint(0, eager.config.vocab_size, (2, length), generator=generator)
        a, b = _loss_and_grads(eager, ids), _loss_and_grads(compiled, ids)
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
        assert a[1].keys() == b[1].keys() and len(a[1]) == 28
        for name in a[1]:
            torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-4, atol=1e-6, msg=name)
        graphs.append(counters["stats"]["unique_graphs"])
    # the layers share their graph (weights are its inputs); the first layer has one of its own only where its
    # input needs no gradient (frozen embeddings, no checkpointing); nothing ran eagerly behind our back
    assert graphs == [1 if checkpointing else 2] * 2, graphs
    assert not counters["graph_break"], dict(counters["graph_break"])
    if checkpointing:  # checkpointed inside the compiled function; transformers' own wrapper is off
        assert not any(layer.gradient_checkpointing for layer in decoder_layers(compiled))


def test_uncompiled_runs_the_eager_layers_and_compiles_them_again_after():
    model = _lora_policy(False)
    compile_layers(model, backend="aot_eager")
    impls = [layer._compiled_call_impl for layer in decoder_layers(model)]
    assert all(impls)
    with uncompiled(model):
        assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))
    assert [layer._compiled_call_impl for layer in decoder_layers(model)] == impls


def test_liger_kernels_are_off_by_default_with_compiled_layers(monkeypatch):
    monkeypatch.setattr(kernels, "supported", lambda: {"qwen3"})
    monkeypatch.setattr(kernels.importlib.util, "find_spec", lambda name: object())
    assert kernels.choose(None, "cuda", "qwen3", compiled=True) == (
        False, "--torch_compile: inductor fuses the norms, MLPs and RoPE")
    assert kernels.choose(True, "cuda", "qwen3", compiled=True) == (True, "--use_liger_kernel")


@pytest.mark.parametrize("preset", ["zero3", "zero3_offload"])
def test_torch_compile_under_zero3_is_refused_in_one_line(preset):
    """(FSDP2 and ZeRO-2 train compiled: tests/test_engines.py)"""
    with pytest.raises(UserError, match="^--torch_compile under ZeRO-3 is not supported: .* use --fsdp full_shard"):
        wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], lora=True,
               torch_compile=True, dry_run=True, deepspeed=preset)


@pytest.mark.slow
def test_wb_sft_torch_compile_trains_as_the_eager_run(tmp_path, capsys):
    """The real thing on the CPU: inductor, padding-free packed rows (the CPU's per-sequence attention breaks the
    layer graph in two; on CUDA torch's varlen kernel does not), LoRA; the losses follow the eager run's."""
    kw = dict(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], lora=True,
              max_steps=3, logging_steps=1, save_steps=10 ** 6, torch_dtype="float32")  # (CUDA's default is bf16)
    eager = wb.sft(output_dir=str(tmp_path / "eager"), **kw)
    compiled = wb.sft(output_dir=str(tmp_path / "compiled"), torch_compile=True, **kw)
    assert "[wb] torch_compile: 2 decoder layers compiled" in capsys.readouterr().out
    losses = [[h["loss"] for h in run.log_history if "loss" in h] for run in (eager, compiled)]
    assert len(losses[1]) == 3 and losses[1][0] == pytest.approx(losses[0][0], rel=1e-5)
    assert losses[1] == pytest.approx(losses[0], rel=2e-3)  # (lr 1e-2 on a random miniature amplifies rounding)
    assert (tmp_path / "compiled" / "checkpoint-3" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_wb_dpo_torch_compile_trains_as_the_eager_run(tmp_path, capsys, monkeypatch):
    """DPO's live reference pass (the adapter disabled, no gradients) and its policy pass go through the same
    compiled layers: a few more graphs, never so many that torch.compile gives up (which it would say in a log line
    and then run the layers eagerly; here it is made an error), and the eager run's losses."""
    torch._dynamo.reset()  # (graphs other tests compiled would count towards the limit: layers share their code)
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    kw = dict(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["preference-demo"], lora=True, lora_dropout=0.0,
              max_steps=3, logging_steps=1, save_steps=10 ** 6, per_device_train_batch_size=2,
              torch_dtype="float32")  # (fp32 on CUDA too, where bf16 is the default)
    eager = wb.dpo(output_dir=str(tmp_path / "eager"), **kw)
    compiled = wb.dpo(output_dir=str(tmp_path / "compiled"), torch_compile=True, **kw)
    assert "[wb] torch_compile: 2 decoder layers compiled" in capsys.readouterr().out
    losses = [[h["loss"] for h in run.log_history if "loss" in h] for run in (eager, compiled)]
    assert len(losses[1]) == 3 and losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.gpu
@pytest.mark.slow
def test_fsdp_with_compiled_checkpointed_layers_trains_as_the_eager_run_on_cuda(tmp_path):
    """On CUDA, one process under FSDP2 (NCCL; all-gathers on a stream of their own) with every layer compiled and
    checkpointed, full fp32 training: the losses follow the same run's without --torch_compile. (On CPU, two
    processes under FSDP2 and ZeRO-2: tests/test_engines.py.)"""
    flags = ["sft", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", "examples/data/identity.jsonl",
             "--full", "--torch_dtype", "float32", "--fsdp", "full_shard", "--gradient_checkpointing", "true",
             "--max_steps", "3", "--logging_steps", "1", "--save_steps", "1000000"]
    eager = wb_cli(*flags, "--output_dir", str(tmp_path / "eager"))
    compiled = wb_cli(*flags, "--torch_compile", "true", "--output_dir", str(tmp_path / "compiled"))
    assert "2 decoder layers compiled" in compiled.stdout and "engine fsdp" in compiled.stdout + compiled.stderr
    assert "recompile_limit" not in compiled.stdout + compiled.stderr
    losses = [[step["loss"] for step in logged_steps(r)] for r in (eager, compiled)]
    assert len(losses[1]) == 3 and losses[1][0] == pytest.approx(losses[0][0], rel=1e-4)
    assert losses[1] == pytest.approx(losses[0], rel=5e-3)

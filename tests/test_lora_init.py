"""--init_lora_weights: PiSSA / OLoRA adapters start from each weight's principal part (taken out of the base), and
their checkpoints are plain LoRA of twice the rank on the original base — equal to PEFT's own conversion, computing
what the PiSSA model computes, resuming exactly, and refused where the base's change would go wrong."""
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from swiftlike.cli.main import main
from swiftlike.config import DPOConfig, GRPOConfig, KTOConfig, SFTConfig, build_config
from swiftlike.errors import UserError
from swiftlike.models import lora_init
from swiftlike.models.loader import build_miniature

MODEL = "Qwen/Qwen3-0.6B"
DATA = "examples/data/identity.jsonl"


def _logits(model):
    ids = torch.arange(100, 140).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids).logits


def _trained(model, seed=1):
    """The adapters moved as training would move them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.02 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("kind, rslora", [("pissa", False), ("olora", False), ("pissa_niter_4", True)])
def test_the_conversion_equals_peft_s_own_and_the_model_it_converts(kind, rslora, tmp_path):
    base = build_miniature(MODEL)
    before = _logits(base)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=kind,
                        use_rslora=rslora)
    model = get_peft_model(base, config)
    torch.testing.assert_close(_logits(model), before, atol=1e-4, rtol=1e-4)  # it starts as the model was
    assert lora_init.mutates_base(kind)
    initial = lora_init.initial_adapters(model)
    model.save_pretrained(tmp_path / "init")  # PEFT's route: the starting adapter kept on disk
    _trained(model)
    after = _logits(model)
    model.save_pretrained(tmp_path / "peft", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    model.save_pretrained(tmp_path / "ours")
    lora_init.write_as_plain_lora(tmp_path / "ours", initial)

    from safetensors.torch import load_file

    theirs, ours = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("peft", "ours"))
    assert theirs.keys() == ours.keys()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0)
    peft_cfg, our_cfg = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("peft", "ours"))
    assert (our_cfg["r"], our_cfg["lora_alpha"], our_cfg["init_lora_weights"]) == \
        (peft_cfg["r"], peft_cfg["lora_alpha"], True) == (8, pytest.approx(8 * 2 ** 0.5 if rslora else 16), True)
    plain = PeftModel.from_pretrained(build_miniature(MODEL), tmp_path / "ours")  # the original base, plain LoRA
    torch.testing.assert_close(_logits(plain), after, atol=1e-4, rtol=1e-4)


def test_resume_rebuilds_the_changed_base_and_the_adapters(tmp_path):
    base = build_miniature(MODEL)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                            init_lora_weights="pissa"))
    initial = lora_init.initial_adapters(model)
    _trained(model)
    model.save_pretrained(tmp_path)
    lora_init.write_as_plain_lora(tmp_path, initial)
    fresh = get_peft_model(build_miniature(MODEL), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                              target_modules="all-linear"))
    again = lora_init.resume(fresh, tmp_path)
    state, fresh_state = model.state_dict(), fresh.state_dict()
    for key in state:  # the decomposed base weights and the trained adapters, as they were
        torch.testing.assert_close(fresh_state[key], state[key], atol=1e-6, rtol=1e-5)
    for key in initial:
        torch.testing.assert_close(again[key], initial[key], atol=0, rtol=0)


def test_a_pissa_run_resumes_exactly_and_its_checkpoint_is_plain_lora(tmp_path, capsys):
    common = ["sft", "--model", MODEL, "--miniature", "--dataset", DATA, "--max_steps", "4", "--save_steps", "2",
              "--init_lora_weights", "pissa", "--lora_dropout", "0", "--lora_rank", "4"]
    assert main([*common, "--output_dir", str(tmp_path / "a")]) == 0
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoint-4")  # as if stopped after step 2
    assert main([*common, "--output_dir", str(tmp_path / "b"), "--resume"]) == 0
    from safetensors.torch import load_file

    whole, resumed = (load_file(str(tmp_path / d / "checkpoint-4" / "adapter_model.safetensors")) for d in "ab")
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], atol=1e-6, rtol=1e-5)
    config = json.loads((tmp_path / "a" / "checkpoint-4" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (8, 64, True)
    # the converted adapters on the original base compute what the PiSSA model trained: PEFT's own PiSSA start
    # (a deterministic SVD) with the trained A, B loaded computes the same
    pissa = get_peft_model(build_miniature(MODEL), LoraConfig(r=4, lora_alpha=32, lora_dropout=0.0,
                                                              target_modules="all-linear", init_lora_weights="pissa"))
    trained = {k: (v[:4] if ".lora_A." in k else v[:, :4]) for k, v in whole.items()}
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(pissa, trained)
    plain = PeftModel.from_pretrained(build_miniature(MODEL), tmp_path / "a" / "checkpoint-4")
    torch.testing.assert_close(_logits(plain), _logits(pissa), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(_logits(plain), _logits(build_miniature(MODEL)), atol=1e-3)  # (it did train)
    capsys.readouterr()
    default = [a for a in common if a not in ("--init_lora_weights", "pissa")]
    assert main([*default, "--output_dir", str(tmp_path / "b"), "--resume"]) == 2  # another start
    assert "was started with --init_lora_weights pissa, this run asks for default" in capsys.readouterr().err
    assert main([*common, "--lora_alpha", "8", "--output_dir", str(tmp_path / "b"), "--resume"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"wb: error: {tmp_path / 'b' / 'checkpoint-4'} was started with --lora_alpha 32, this run asks for 8; resume "
        "with the LoRA options it was started with")


@pytest.mark.parametrize("extra, said", [
    ({"full": True}, "--init_lora_weights pissa does not combine with --full"),
    ({"use_dora": True}, "does not combine with --use_dora"),
    ({"qlora": True}, "does not combine with --qlora"),
    ({"init_lora_weights": "pissa_niter_0"}, "'pissa_niter_0' is not one of default, gaussian, pissa"),
    ({"init_lora_weights": "loftq"}, "'loftq' is not one of"),
])
def test_what_does_not_combine_is_refused_when_options_are_read(extra, said):
    with pytest.raises(UserError, match=said):
        build_config(SFTConfig, {"model": MODEL, "dataset": [DATA], "init_lora_weights": "pissa", **extra})
    assert build_config(SFTConfig, {"model": MODEL, "dataset": [DATA], "init_lora_weights": "gaussian",
                                    "use_dora": True}).init_lora_weights == "gaussian"  # (base unchanged)


@pytest.mark.parametrize("cls, extra, way_out", [
    (DPOConfig, {}, "or a reference-free --loss_type \\(simpo, orpo, cpo\\)"),
    (KTOConfig, {"per_device_train_batch_size": 2}, "or wb dpo with a reference-free --loss_type"),
    (GRPOConfig, {"reward_funcs": ["format"], "beta": 0.04}, "or --beta 0 \\(no reference\\)"),
])
def test_a_reference_without_the_adapters_is_refused(cls, extra, way_out):
    common = {"model": MODEL, "dataset": [DATA], "init_lora_weights": "olora", **extra}
    with pytest.raises(UserError, match="--init_lora_weights olora: this run's reference is the model without its "
                                        f"adapters.*{way_out}"):
        build_config(cls, common)
    allowed = {DPOConfig: {"loss_type": "simpo"}, KTOConfig: {"init_lora_weights": "gaussian"},
               GRPOConfig: {"beta": 0.0}}[cls]
    build_config(cls, {**common, **allowed})


def test_zero3_is_refused_when_options_are_read():
    with pytest.raises(UserError, match="does not combine with ZeRO-3"):
        build_config(SFTConfig, {"model": MODEL, "dry_run": True, "deepspeed": "zero3", "init_lora_weights": "pissa"})


@pytest.mark.parametrize("model, targets, said", [
    (MODEL, ["q_proj", "lm_head"], "the output layer shares its weight with the input embedding here"),
    ("Qwen/Qwen3-30B-A3B", ["all-linear"], "the MoE experts' weights are fused \\(3-D\\)"),
])
def test_weights_it_cannot_decompose_are_refused_before_any_change(model, targets, said, tmp_path, capsys):
    assert main(["sft", "--model", model, "--miniature", "--dataset", DATA, "--init_lora_weights", "pissa",
                 "--target_modules", *targets, "--max_steps", "1", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert said.replace("\\", "") in err and "\n" not in err


def test_gaussian_reaches_peft():
    from swiftlike.models.loader import attach_lora

    cfg = build_config(SFTConfig, {"model": MODEL, "dataset": [DATA], "init_lora_weights": "gaussian",
                                   "lora_rank": 16})
    torch.manual_seed(0)
    model = attach_lora(build_miniature(MODEL), cfg)
    a = torch.cat([p.flatten() for n, p in model.named_parameters() if ".lora_A." in n])
    assert all((p == 0).all() for n, p in model.named_parameters() if ".lora_B." in n)
    assert a.std().item() == pytest.approx(1 / 16, rel=0.05)  # (default: Kaiming-uniform, std 1/sqrt(3 fan_in))

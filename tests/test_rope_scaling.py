"""--rope_scaling: RoPE stretched (linear, YaRN) for sequences past a model's positions, and rebuilt so by every later
command: the run's args.json keeps the config overrides, inference and the merged export (reloaded by plain
transformers) compute with the stretched RoPE, resuming or continuing with another refuses, and what cannot apply it
(vLLM rollouts, a base served without it, GGUF) says so in one line."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from swiftlike.cli.main import main
from swiftlike.config import SFTConfig, build_config
from swiftlike.errors import UserError
from swiftlike.models import rope
from swiftlike.models.loader import build_miniature, model_config
from swiftlike.models.resolve import load_for_inference

MODEL = "Qwen/Qwen3-0.6B"  # 40,960 positions, RoPE unscaled
YARN = {"rope_type": "yarn", "factor": 4}
DATA = "examples/data/identity.jsonl"


def test_a_kind_takes_its_factor_from_the_sequence_length():
    config = model_config(MODEL, miniature=True)
    got = rope.overrides("yarn", config, 100_000)
    assert got["max_position_embeddings"] == 3 * 40960  # ceil(100,000 / 40,960) = 3
    assert got["rope_parameters"] == {"rope_theta": 1000000.0, "rope_type": "yarn", "factor": 3.0,
                                      "original_max_position_embeddings": 40960}
    assert rope.describe(got) == "yarn x3 (40,960 -> 122,880 positions)"
    linear = rope.overrides("linear", config, 50_000)
    assert linear == {"rope_parameters": {"rope_theta": 1000000.0, "rope_type": "linear", "factor": 2.0},
                      "max_position_embeddings": 81920}
    given = rope.overrides('{"type": "yarn", "factor": 4, "original_max_position_embeddings": 32768}', config, 10)
    assert given["max_position_embeddings"] == 131072  # Qwen's own recipe: 32,768 x 4
    assert given["rope_parameters"]["original_max_position_embeddings"] == 32768
    assert rope.overrides(None, config, 10) == {}
    assert config.rope_parameters["rope_type"] == "default"  # (the config read is not changed)
    odd = rope.overrides('{"rope_type": "linear", "factor": 1.01}', config, 10)
    assert rope.describe(odd) == "linear x1.01 (40,960 -> 41,370 positions)"
    with pytest.raises(UserError, match="not combined with --trust_remote_code"):
        rope.overrides("yarn", config, 100_000, trust_remote_code=True)


def test_phi_configs_get_the_original_length_where_transformers_reads_it():
    from transformers import AutoModelForCausalLM

    config = model_config("microsoft/phi-4", miniature=True)  # (its config has a top-level original length)
    changed = rope.overrides('{"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 8192}', config,
                             10)
    model = AutoModelForCausalLM.from_config(rope.apply(config, changed))
    assert model.config.rope_parameters["original_max_position_embeddings"] == 8192
    assert model.config.max_position_embeddings == 32768


@pytest.mark.parametrize("spec, length, said", [
    ("ntk", 10, "'ntk' is not one of linear, yarn"),
    ("{bad", 10, "not valid JSON"),
    ('{"rope_type": "dynamic", "factor": 2}', 10, "rope_type 'dynamic' is not one of"),
    ('{"rope_type": "linear", "factor": 2, "beta_fast": 32}', 10, "linear takes factor, rope_type, not beta_fast"),
    ('{"rope_type": "yarn", "factor": 1}', 10, "factor must be a number above 1"),
    ('{"rope_type": "yarn", "factor": 2, "original_max_position_embeddings": 1.5}', 10, "a whole number"),
    ("yarn", 40960, "sequences of 40,960 tokens fit the model's 40,960 positions; nothing to stretch"),
    ('{"rope_type": "yarn", "factor": Infinity}', 10, "factor must be a number above 1"),
    ('{"rope_type": "yarn", "factor": NaN}', 10, "factor must be a number above 1"),
    ('{"rope_type": "yarn", "factor": 2, "attention_factor": "big"}', 10, "attention_factor must be a number"),
    ('{"rope_type": "yarn", "factor": 2, "beta_fast": 1, "beta_slow": 2}', 10, "beta_fast \\(1\\) must be above"),
])
def test_what_cannot_be_stretched_is_refused_in_one_line(spec, length, said):
    with pytest.raises(UserError, match=said):
        rope.overrides(spec, model_config(MODEL, miniature=True), length)


@pytest.mark.parametrize("model, said", [
    ("meta-llama/Llama-3.2-1B-Instruct", "RoPE is scaled already \\(llama3, for 131,072 positions\\)"),
    ("google/gemma-3-1b-it", "does not describe one rotary embedding"),
    ("Qwen/Qwen2.5-VL-3B-Instruct", "multimodal RoPE"),
])
def test_models_it_does_not_fit_are_refused(model, said):
    with pytest.raises(UserError, match=said):
        rope.overrides("yarn", model_config(model, miniature=True), 10**6)


def test_the_option_reads_names_json_and_recipe_mappings():
    common = dict(model=MODEL, dataset=[DATA])
    assert build_config(SFTConfig, {**common, "rope_scaling": "yarn"}).rope_scaling == "yarn"
    cfg = build_config(SFTConfig, {**common, "rope_scaling": {"rope_type": "yarn", "factor": 4}})  # (YAML)
    assert json.loads(cfg.rope_scaling) == YARN
    with pytest.raises(UserError, match="--rope_scaling: 'long' is not one of"):
        build_config(SFTConfig, {**common, "rope_scaling": "long"})


def test_the_dry_run_checks_it_against_the_model(capsys):
    common = ["sft", "--model", "Qwen/Qwen3-8B", "--dry_run", "--rope_scaling", "yarn"]
    assert main([*common, "--max_length", "65536"]) == 0
    assert "note: --rope_scaling: yarn x2 (40,960 -> 81,920 positions)" in capsys.readouterr().out
    assert main(common) == 2
    assert "sequences of 2,048 tokens fit the model's 40,960 positions" in capsys.readouterr().err
    assert main([*common[:-1], '{"rope_type": "yarn", "factor": 2}', "--max_length", "200000"]) == 0
    assert "note: sequences up to 200,000 tokens run past the model's 81,920 positions (yarn x2)" in \
        capsys.readouterr().out
    assert main(["grpo", "--model", "Qwen/Qwen3-8B", "--dry_run", "--use_vllm", "--rope_scaling", "yarn",
                 "--max_completion_length", "65536"]) == 2
    assert "--rope_scaling with --use_vllm" in capsys.readouterr().err


def test_sequences_past_the_positions_get_a_note_unless_stretched():
    config = model_config(MODEL, miniature=True)
    assert "run past the model's 40,960 trained positions; add --rope_scaling yarn" in \
        rope.past_positions(config, 65536)
    assert rope.past_positions(config, 4096) is None
    assert rope.past_positions(rope.apply(config, rope.overrides("yarn", config, 65536)), 65536) is None


def _rotary(model):
    return next(m for n, m in model.named_modules() if n.endswith("rotary_emb"))


def _logits(model, length=64):
    ids = torch.arange(100, 100 + length).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids, position_ids=torch.arange(length).unsqueeze(0) * 700).logits  # far positions


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA run with YaRN x4 on a local base directory (a saved miniature, as a downloaded model would be)."""
    root = tmp_path_factory.mktemp("rope")
    base = build_miniature(MODEL)
    base.save_pretrained(root / "base")
    from swiftlike.models.loader import load_tokenizer

    load_tokenizer(MODEL, miniature=True).save_pretrained(root / "base")
    common = ["--model", str(root / "base"), "--template", "qwen3", "--dataset", DATA, "--max_steps", "2",
              "--save_steps", "2", "--learning_rate", "0.01"]
    assert main(["sft", *common, "--rope_scaling", json.dumps(YARN), "--output_dir", str(root / "lora")]) == 0
    return root, common


def test_a_lora_run_keeps_its_rope_for_inference_and_export(lora_run, capsys):
    root, _ = lora_run
    ckpt = root / "lora" / "checkpoint-2"
    overrides = json.loads((root / "lora" / "args.json").read_text())["config_overrides"]
    assert overrides["rope_parameters"]["rope_type"] == "yarn" and overrides["max_position_embeddings"] == 163840
    model, _, _ = load_for_inference(adapters=str(ckpt), torch_dtype="float32")
    assert model.config.rope_parameters["rope_type"] == "yarn" and model.config.max_position_embeddings == 163840
    assert _rotary(model).attention_scaling == pytest.approx(0.1 * torch.log(torch.tensor(4.0)).item() + 1)

    assert main(["export", "--adapters", str(ckpt), "--merge", "--output_dir", str(root / "merged")]) == 0
    config = json.loads((root / "merged" / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "yarn" and config["max_position_embeddings"] == 163840
    assert "| rope_scaling | yarn x4 (40,960 -> 163,840 positions) |" in (root / "merged" / "README.md").read_text()
    merged = AutoModelForCausalLM.from_pretrained(root / "merged", dtype=torch.float32)  # not our reader
    torch.testing.assert_close(_logits(merged), _logits(model), atol=1e-4, rtol=1e-4)
    unstretched = AutoModelForCausalLM.from_pretrained(  # the same weights with the model's own RoPE: other logits
        root / "merged", dtype=torch.float32, max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    assert (_logits(unstretched) - _logits(merged)).abs().max() > 0.1
    capsys.readouterr()
    assert main(["export", "--adapters", str(ckpt), "--merge", "--to", "gguf", "--output_dir", str(root / "g")]) == 2
    assert "--to gguf: 'yarn' RoPE scaling is not written" in capsys.readouterr().err


def test_the_in_memory_merge_applies_the_run_s_rope(lora_run):
    from swiftlike.export.merge import merged_model
    from swiftlike.models.resolve import resolve

    root, _ = lora_run
    model = merged_model(resolve(adapters=str(root / "lora" / "checkpoint-2")), torch.float32, None)
    assert model.config.rope_parameters["rope_type"] == "yarn" and _rotary(model).rope_type == "yarn"


def test_resuming_or_continuing_with_another_rope_is_refused(lora_run, capsys):
    root, common = lora_run
    ckpt = str(root / "lora" / "checkpoint-2")
    capsys.readouterr()
    assert main(["sft", *common, "--output_dir", str(root / "lora"), "--resume_from_checkpoint", ckpt,
                 "--overwrite_output_dir"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"wb: error: {ckpt} was trained with yarn x4 (40,960 -> 163,840 positions), this run asks for "
                   "the model's own RoPE; resume with the --rope_scaling (and, for a factor it derives, the sequence "
                   "length) it was started with")
    assert main(["sft", *common, "--adapters", ckpt, "--rope_scaling", "linear", "--max_length", "100000",
                 "--output_dir", str(root / "other")]) == 2
    assert "was trained with yarn x4 (40,960 -> 163,840 positions), not linear x3" in capsys.readouterr().err
    assert main(["sft", *common, "--adapters", ckpt, "--output_dir", str(root / "more")]) == 0
    assert f"[wb] RoPE: yarn x4 (40,960 -> 163,840 positions), as --adapters {ckpt} trained" in capsys.readouterr().out
    assert json.loads((root / "more" / "args.json").read_text())["config_overrides"]["max_position_embeddings"] == \
        163840


def test_deploy_and_vllm_load_the_base_as_the_adapters_were_trained(lora_run, monkeypatch):
    from swiftlike.config import DeployConfig
    from swiftlike.pipelines import deploy, infer

    root, _ = lora_run
    ckpt = str(root / "lora" / "checkpoint-2")
    base = deploy.served_base(build_config(DeployConfig, {"adapters": [f"a={ckpt}"]}), {"a": ckpt})
    assert base.load["overrides"]["rope_parameters"]["rope_type"] == "yarn"
    deploy.check_adapters(base, {"a": ckpt})
    plain = deploy.served_base(build_config(DeployConfig, {"model": str(root / "base"), "adapters": [f"a={ckpt}"]}),
                               {"a": ckpt})
    with pytest.raises(UserError, match="adapter 'a' .* was trained with yarn x4 .* the served base runs the "
                                        "model's own RoPE; serve it with its own `wb deploy --adapters`"):
        deploy.check_adapters(plain, {"a": ckpt})

    from swiftlike.infer import vllm as backend
    from swiftlike.models.resolve import resolve

    made = {}
    monkeypatch.setattr(backend, "require_vllm", lambda: None)
    monkeypatch.setattr(backend, "VLLMEngine", lambda *a, **kw: made.update(kw))
    infer.vllm_engine(resolve(adapters=ckpt), {"a": ckpt}, False)
    assert made["hf_overrides"]["rope_parameters"]["rope_type"] == "yarn"
    assert made["max_model_len"] == 163840  # the stretched context, not the base's 40,960


def test_the_trained_model_and_a_full_run_s_reference_have_it(tmp_path):
    import swiftlike as wb

    common = dict(model=MODEL, miniature=True, dataset=[DATA], max_steps=1, logging_steps=1)
    plain = wb.sft(**common, output_dir=str(tmp_path / "plain")).log_history[0]["loss"]
    stretched = wb.sft(**common, rope_scaling=json.dumps(YARN), output_dir=str(tmp_path / "yarn"))
    assert stretched.log_history[0]["loss"] != pytest.approx(plain, abs=1e-3)  # the trained model computes with it
    dpo = wb.dpo(model=MODEL, miniature=True, full=True, dataset=["swiftlike/assets/datasets/preference_demo.jsonl"],
                 max_steps=1, logging_steps=1, rope_scaling=json.dumps(YARN), output_dir=str(tmp_path / "dpo"))
    assert dpo.log_history[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # its frozen reference equals the policy


def test_a_full_run_writes_the_stretched_rope_into_its_config(tmp_path):
    assert main(["sft", "--model", MODEL, "--miniature", "--full", "--dataset", DATA, "--max_steps", "1",
                 "--rope_scaling", '{"rope_type": "linear", "factor": 2}', "--output_dir", str(tmp_path)]) == 0
    config = json.loads((tmp_path / "checkpoint-1" / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "linear" and config["max_position_embeddings"] == 81920
    model, _, _ = load_for_inference(str(tmp_path / "checkpoint-1"), torch_dtype="float32")
    assert _rotary(model).rope_type == "linear"


def test_grpo_with_vllm_refuses_before_anything_is_written(tmp_path, capsys):
    assert main(["grpo", "--model", MODEL, "--miniature", "--dataset", "examples/data/identity.jsonl",
                 "--reward_funcs", "format", "--use_vllm", "--rope_scaling", json.dumps(YARN),
                 "--output_dir", str(tmp_path / "g")]) == 2
    assert "--rope_scaling with --use_vllm: vLLM would generate with the base's own RoPE" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()

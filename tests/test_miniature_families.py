"""--miniature for every registered family: configs and tokenizers from the registry, offline, no hub access;
stand-in vocabularies announced; sft/dpo/grpo runs and `wb infer --adapters` on non-Qwen families."""
import json
import re
from pathlib import Path

import pytest

from swiftlike.cli.main import main
from swiftlike.errors import UserError
from swiftlike.models.loader import ASSETS, load_tokenizer, miniature_config, miniature_tokenizer
from swiftlike.registry import TOKENIZERS, find_model, models
from swiftlike.templates import get_template

DATA = "examples/data/identity.jsonl#8"
# registered ids without a miniature, each with the reason it gives
NO_MINIATURE = {"openbmb/MiniCPM4-0.5B": "remote code", "openbmb/MiniCPM4-8B": "remote code",
                "mistralai/Mistral-Small-3.2-24B-Instruct-2506": "not a causal-LM class"}
# one id per family (and per kind of miniature: composite, MoE, latent attention, stand-in or own tokenizer)
ONE_PER_FAMILY = ["Qwen/Qwen2.5-0.5B-Instruct", "Qwen/QwQ-32B", "meta-llama/Llama-3.2-1B-Instruct",
                  "mistralai/Mistral-7B-Instruct-v0.3", "google/gemma-3-4b-it", "microsoft/Phi-3.5-mini-instruct",
                  "deepseek-ai/DeepSeek-V3", "THUDM/glm-4-9b-chat", "internlm/internlm2_5-7b-chat",
                  "01-ai/Yi-1.5-6B-Chat"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}]
MARKER = re.compile(r"<\|[^|<>]+\|>|<｜[^｜]+｜>|\[/?[A-Z_]+\]|</?(?:think|s|bos|eos|sop|start_of_turn|end_of_turn)>"
                    r"|\[gMASK\]")


@pytest.fixture
def no_hub(monkeypatch):
    """Any download fails the test: a registered id's miniature never goes to the hub."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr("swiftlike.models.loader.download", refuse)


def _one_per_tokenizer() -> list:
    seen, out = set(), []
    for m in models():
        key = (m.template, m.miniature_tokenizer)
        if m.miniature_kind != "none" and not m.tokenizer and key not in seen:
            seen.add(key)
            out.append(m.model_id)
    return out


def test_every_registered_id_builds_its_miniature_config_offline(no_hub):
    unavailable = {}
    for m in models():
        if m.miniature_kind == "none":
            with pytest.raises(UserError) as e:
                miniature_config(m.model_id)
            unavailable[m.model_id] = str(e.value)
            continue
        config = miniature_config(m.model_id)
        text = config.get_text_config()
        assert (text.num_hidden_layers, text.hidden_size) == (2, 64), m.model_id
        assert type(config).model_type == m.config["model_type"], m.model_id
    assert unavailable.keys() == NO_MINIATURE.keys()
    for model_id, why in NO_MINIATURE.items():
        assert unavailable[model_id].startswith(f"no miniature of {model_id}: ") and why in unavailable[model_id]
        assert "\n" not in unavailable[model_id] and "--miniature" not in unavailable[model_id]


def test_miniatures_keep_the_structure(no_hub):
    gemma2 = miniature_config("google/gemma-2-2b-it")
    assert (gemma2.final_logit_softcapping, gemma2.attn_logit_softcapping) == (30.0, 50.0)
    assert gemma2.layer_types == ["sliding_attention", "full_attention"] and gemma2.query_pre_attn_scalar == 16
    gemma3 = miniature_config("google/gemma-3-4b-it")          # text model + vision tower, both shrunk
    assert gemma3.text_config.layer_types == ["sliding_attention", "full_attention"]
    assert gemma3.vision_config.num_hidden_layers == 1 and gemma3.vision_config.hidden_size == 32
    assert miniature_config("google/gemma-3-1b-it").num_key_value_heads == 1                 # multi-query
    phi = miniature_config("microsoft/Phi-3.5-mini-instruct")                               # multi-head, LongRoPE
    assert phi.num_key_value_heads == phi.num_attention_heads
    assert phi.rope_parameters["rope_type"] == "longrope" and len(phi.rope_parameters["long_factor"]) == 8
    v3 = miniature_config("deepseek-ai/DeepSeek-V3")            # latent attention, 1 dense + 1 MoE layer
    assert (v3.first_k_dense_replace, v3.n_routed_experts, v3.n_group, v3.kv_lora_rank) == (1, 4, 2, 32)
    assert v3.rope_parameters["rope_type"] == "yarn" and v3.num_key_value_heads == v3.num_attention_heads
    mixtral = miniature_config("mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert (mixtral.num_local_experts, mixtral.num_experts_per_tok) == (4, 2)
    glm = miniature_config("THUDM/glm-4-9b-chat")
    assert glm.model_type == "glm" and glm.attention_bias and glm.rope_parameters["partial_rotary_factor"] == 0.5
    assert miniature_config("meta-llama/Llama-3.1-8B-Instruct").rope_parameters["rope_type"] == "llama3"
    assert miniature_config("internlm/internlm3-8b-instruct").model_type == "internlm3"


@pytest.mark.parametrize("model_id", _one_per_tokenizer())
def test_the_family_template_encodes_with_the_miniature_tokenizer(model_id, no_hub):
    meta = find_model(model_id)
    tok = miniature_tokenizer(meta)
    config = miniature_config(model_id).get_text_config()
    assert len(tok) <= config.vocab_size
    assert tok.eos_token_id is not None and tok.chat_template
    template = get_template(model_id, tok)
    assert template.stop_token_ids, "the template's stop words are tokens"
    messages = CHAT[1:] if meta.template in ("gemma2", "mistral_v1") else CHAT
    text = template.render_text(messages)
    markers = set(MARKER.findall(text))
    if meta.template == "mistral_v1":   # v1 has no control tokens: [INST] is plain text in the real vocabulary too
        markers -= {"[INST]", "[/INST]"}
    for marker in markers:
        assert len(tok(marker, add_special_tokens=False).input_ids) == 1, marker
    enc = template.encode({"messages": messages})
    assert max(enc["input_ids"]) < config.vocab_size and any(x != -100 for x in enc["labels"])
    if not TOKENIZERS[meta.miniature_tokenizer].own:            # the stand-in's ids are the miniature's
        assert (config.bos_token_id, config.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)


def test_own_tokenizers_have_the_real_ids(no_hub):
    qwen25 = miniature_tokenizer(find_model("Qwen/Qwen2.5-7B-Instruct"))
    assert qwen25("Hello world! 你好，世界。", add_special_tokens=False).input_ids == \
        [9707, 1879, 0, 220, 108386, 3837, 99489, 1773]
    assert [qwen25.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<tool_call>")] == \
        [151644, 151645, 151657]
    assert len(qwen25) == 151665                                  # no <think> / <tool_response> before Qwen3
    distill = miniature_tokenizer(find_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"))
    assert [distill.convert_tokens_to_ids(t) for t in ("<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                                                       "<｜begin▁of▁sentence｜>", "<think>", "</think>")] == \
        [151643, 151644, 151645, 151646, 151648, 151649]
    assert distill("hi").input_ids[0] == 151646                   # it prepends bos, as the real one does
    qwq = miniature_tokenizer(find_model("Qwen/QwQ-32B"))
    assert qwq.convert_tokens_to_ids("<think>") == 151667
    assert qwq.chat_template == (ASSETS / "chat_templates" / "qwq.jinja").read_text(encoding="utf-8")


def test_stand_in_vocabulary_is_announced_once(capsys, no_hub):
    tok = load_tokenizer("meta-llama/Llama-3.1-8B-Instruct", miniature=True)
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["[wb] miniature: Llama-3 template and special tokens over a stand-in vocabulary (GPT-2's "
                   "byte-level BPE, not Llama-3's): ordinary text gets other token ids than in the real model"]
    assert tok.convert_tokens_to_ids("<|eot_id|>") == tok.eos_token_id and tok.pad_token_id == tok.eos_token_id
    load_tokenizer("Qwen/Qwen2.5-0.5B-Instruct", miniature=True)  # its own tokenizer: nothing to say
    assert capsys.readouterr().out == ""
    load_tokenizer("THUDM/glm-4-9b-chat", miniature=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "built as GlmForCausalLM" in lines[0] and "GLM-4 template" in lines[1]


def test_unregistered_miniature_error_does_not_suggest_the_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        miniature_config("nobody/no-such-model")
    message = str(e.value)
    assert message.startswith("a miniature of 'nobody/no-such-model' needs its config.json and tokenizer files, "
                              "which could not be fetched from huggingface (offline mode is on)")
    assert "add --miniature" not in message and "\n" not in message


def test_cli_miniature_without_one_is_a_one_line_error(capsys, tmp_path, no_hub):
    code = main(["sft", "--model", "openbmb/MiniCPM4-0.5B", "--miniature", "--dataset", DATA,
                 "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("wb: error: no miniature of openbmb/MiniCPM4-0.5B: MiniCPM4's network")


def _checkpoint(out: Path) -> Path:
    return max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ONE_PER_FAMILY)
def test_sft_then_infer_from_the_checkpoint(model_id, tmp_path, capsys, no_hub):
    out = tmp_path / "run"
    assert main(["sft", "--model", model_id, "--miniature", "--lora", "--max_steps", "2", "--dataset", DATA,
                 "--per_device_train_batch_size", "2", "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    meta = find_model(model_id)
    stand_in = not TOKENIZERS[meta.miniature_tokenizer].own
    assert ("over a stand-in vocabulary" in printed) == stand_in
    ckpt = _checkpoint(out)
    assert json.loads((ckpt / "args.json").read_text())["template"] == meta.template
    assert main(["infer", "--adapters", str(ckpt), "--query", "hi", "--max_new_tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()                        # some answer, from the checkpoint's model


@pytest.mark.slow
def test_dpo_and_grpo_steps_on_non_qwen_families(tmp_path, capsys, no_hub):
    dpo = tmp_path / "dpo"
    assert main(["dpo", "--model", "mistralai/Mixtral-8x7B-Instruct-v0.1", "--miniature", "--lora", "--dataset",
                 "preference-demo#4", "--max_steps", "1", "--per_device_train_batch_size", "2",
                 "--output_dir", str(dpo)]) == 0
    assert (_checkpoint(dpo) / "adapter_model.safetensors").is_file()
    grpo = tmp_path / "grpo"
    assert main(["grpo", "--model", "google/gemma-2-2b-it", "--miniature", "--lora", "--dataset", "arithmetic#4",
                 "--reward_funcs", "length", "--num_generations", "2", "--per_device_train_batch_size", "4",
                 "--max_completion_length", "4", "--max_steps", "1", "--output_dir", str(grpo)]) == 0
    assert (_checkpoint(grpo) / "adapter_model.safetensors").is_file()
    assert "Gemma template and special tokens over a stand-in vocabulary" in capsys.readouterr().out

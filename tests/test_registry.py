"""The model registry: lookups, template references, and the generated docs."""
from pathlib import Path

import pytest

from swiftlike.registry import find_model, models, suggest
from swiftlike.registry.table import models_markdown
from swiftlike.templates import TEMPLATES

FAMILIES = {"qwen3", "qwen2_5", "qwq", "qwen_vl", "llama3", "mistral", "gemma", "phi", "deepseek", "glm", "internlm", "yi",
            "minicpm"}


def test_models_doc_is_current():
    doc = Path(__file__).parents[1] / "docs" / "models.md"
    assert doc.read_text(encoding="utf-8") == models_markdown(), "run: python scripts/gen_models_doc.py"


def test_every_model_names_a_known_template_and_every_family_is_there():
    assert {m.family for m in models()} == FAMILIES
    for m in models():
        assert m.template in TEMPLATES, m.model_id


@pytest.mark.parametrize("model_id, template", [
    ("Qwen/Qwen2.5-7B-Instruct", "qwen2_5"), ("meta-llama/Llama-3.3-70B-Instruct", "llama3_1"),
    ("LLM-Research/Meta-Llama-3-8B-Instruct", "llama3"), ("google/gemma-3-1b-it", "gemma3"),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "deepseek_r1_distill"), ("mistralai/Mistral-Nemo-Instruct-2407",
                                                                          "mistral_nemo"),
])
def test_lookup_by_hub_and_modelscope_ids(model_id, template):
    assert find_model(model_id).template == template


def test_every_model_declares_its_miniature_as_data():
    from swiftlike.models.loader import ASSETS
    from swiftlike.registry import TOKENIZERS

    for m in models():
        if m.no_miniature:
            assert not m.config and m.miniature_kind == "none", m.model_id
            continue
        assert m.config["model_type"] and m.config["architectures"], m.model_id
        assert m.tokenizer or m.miniature_tokenizer in TOKENIZERS, m.model_id
        if not m.tokenizer:                                  # the tokenizer carries the family's chat template
            assert (ASSETS / "chat_templates" / f"{m.template}.jinja").is_file(), m.template
    assert find_model("THUDM/glm-4-9b-chat-hf").model_type == "glm"          # transformers' GlmForCausalLM
    assert {m.miniature_kind for m in models("qwen2_5")} == {"own tokenizer"}
    assert find_model("meta-llama/Llama-3.1-8B-Instruct").miniature_kind == "stand-in tokenizer"


def test_unknown_model_suggests_neighbours():
    assert find_model("Qwen/Qwen3-9B") is None
    assert "Qwen/Qwen3-8B" in suggest("Qwen/Qwen3-9B")


def test_local_model_without_chat_template_resolves_by_architecture(tmp_path, qwen3_tokenizer):
    import copy
    import json

    from swiftlike.config import SFTConfig
    from swiftlike.errors import UserError
    from swiftlike.pipelines.sft import resolve_template_name

    tok = copy.copy(qwen3_tokenizer)
    tok.chat_template = None
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Gemma2ForCausalLM"]}))
    cfg = SFTConfig(model=str(tmp_path), dataset=["x"])
    assert resolve_template_name(cfg, tok) == "gemma2"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(UserError, match="models of its architecture use: deepseek_r1_distill, qwen2_5, qwq"):
        resolve_template_name(cfg, tok)
    tok.chat_template = "{{ messages }}"
    assert resolve_template_name(cfg, tok) == str(tmp_path)

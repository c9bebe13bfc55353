"""One resolver answers what --model / --adapters / --miniature / --template point to, for every command."""
import json
import subprocess
import sys

import pytest

from swiftlike.errors import UserError
from swiftlike.models.resolve import ModelRef, read_args, resolve, stored_dtype, template_name


def _checkpoint(path, **args):
    path.mkdir(parents=True)
    (path / "args.json").write_text(json.dumps(args))
    return path


def test_registered_hub_id_needs_no_download():
    ref = resolve("Qwen/Qwen3-8B")
    assert ref == ModelRef(model="Qwen/Qwen3-8B", base="Qwen/Qwen3-8B", template="qwen3")
    assert ref.checkpoint is None and ref.meta.family == "qwen3"
    assert resolve("Qwen/Qwen3-8B", template="chatml_custom").template == "chatml_custom"  # --template wins


def test_lora_checkpoint_names_its_base_template_and_task(tmp_path):
    ckpt = _checkpoint(tmp_path / "run" / "checkpoint-5", model="Qwen/Qwen3-0.6B", template="qwen3_instruct_2507",
                       task="rm", base_model_dir=str(tmp_path / "run" / "base_model"), hub="modelscope")
    (ckpt / "adapter_config.json").write_text("{}")
    ref = resolve(adapters=str(ckpt))
    assert (ref.model, ref.base, ref.adapters, ref.template, ref.task, ref.hub) == (
        "Qwen/Qwen3-0.6B", str(tmp_path / "run" / "base_model"), str(ckpt), "qwen3_instruct_2507", "rm", "modelscope")
    assert ref.checkpoint == str(ckpt)
    assert resolve("/other/base", adapters=str(ckpt)).base == "/other/base"  # --model overrides the base


def test_full_checkpoint_or_export_is_its_own_base(tmp_path):
    ckpt = _checkpoint(tmp_path / "full", model="meta-llama/Llama-3.2-1B-Instruct", task="sft")
    ref = resolve(str(ckpt))
    assert (ref.model, ref.base, ref.adapters, ref.template) == (
        "meta-llama/Llama-3.2-1B-Instruct", str(ckpt), None, "llama3_2")   # the registry's, for the trained model
    assert ref.checkpoint == str(ckpt)


def test_local_model_without_a_known_template_asks_the_tokenizer(tmp_path, qwen3_tokenizer):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"architectures": ["Gemma2ForCausalLM"]}))
    ref = resolve(str(tmp_path / "m"))
    assert ref.template is None and ref.base == str(tmp_path / "m")
    assert template_name(ref, qwen3_tokenizer) == str(tmp_path / "m")       # its own chat template

    class NoTemplate:
        chat_template = None
    assert template_name(ref, NoTemplate()) == "gemma2"                      # the one template of its architecture


def test_miniature_flag_travels():
    assert resolve("google/gemma-2-2b-it", miniature=True).miniature


@pytest.mark.parametrize("kwargs, message", [
    ({"adapters": "/no/such/dir"}, "--adapters /no/such/dir: no such directory"),
    ({}, "--model is required"),
])
def test_bad_references(kwargs, message):
    with pytest.raises(UserError, match=message):
        resolve(**kwargs)


def test_a_checkpoint_of_the_other_kind_is_named_for_what_it_is(tmp_path):
    """A full checkpoint given as --adapters, or a LoRA one as --model: one line saying which flag takes it (they
    ended in PEFT's or transformers' traceback)."""
    full = _checkpoint(tmp_path / "full", model="Qwen/Qwen3-0.6B")
    (full / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"^--adapters .*full: no adapter_config.json there; a full-parameter "
                                        r"checkpoint is given with --model$"):
        resolve(adapters=str(full))
    with pytest.raises(UserError, match="no adapter_config.json there; a LoRA checkpoint is expected$"):
        resolve(adapters=str(tmp_path))
    lora = _checkpoint(tmp_path / "lora", model="Qwen/Qwen3-0.6B")
    (lora / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match=r"is a LoRA checkpoint \(adapters only\): give it as --adapters"):
        resolve(str(lora))


@pytest.mark.parametrize("config, dtype", [
    ({"dtype": "bfloat16"}, "bfloat16"), ({"torch_dtype": "float16"}, "float16"),  # (older transformers' key)
    ({"text_config": {"dtype": "bfloat16"}}, "bfloat16"),  # a vision-language model's
    ({"dtype": "int8"}, "float32"), ({}, "float32")])     # not a floating dtype, or none: transformers' float32
def test_stored_dtype_is_what_the_config_says(tmp_path, config, dtype):
    import torch

    (tmp_path / "config.json").write_text(json.dumps(config))
    assert stored_dtype(str(tmp_path)) == getattr(torch, dtype)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(UserError, match="config.json: cannot read the model's config"):
        stored_dtype(str(tmp_path))


def test_checkpoint_without_args_json(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "adapter_config.json").write_text("{}")  # a PEFT adapter from elsewhere
    with pytest.raises(UserError, match=r"no args.json; is this a checkpoint written by swiftlike"):
        resolve(adapters=str(tmp_path / "c"))
    (tmp_path / "c" / "args.json").write_text("{oops")
    with pytest.raises(UserError, match=r"args.json: not valid JSON"):
        read_args(str(tmp_path / "c"))


def test_no_package_reaches_up_into_pipelines():
    """The reward-model reward (rewards/) and the resolver (models/) load checkpoints without importing the
    pipelines layer."""
    code = ("import sys; import swiftlike.rewards.model, swiftlike.models.resolve; "
            "print([m for m in sys.modules if m.startswith('swiftlike.pipelines')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

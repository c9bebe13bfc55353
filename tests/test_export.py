"""`wb export --merge`: the merged model equals base + adapter, and reloads with plain transformers (a process that
never imports swiftlike), stopping where our template ends a turn and rendering chats as our template does."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import swiftlike as wb
from swiftlike import accel
from swiftlike.cli.main import main
from swiftlike.models.resolve import load_for_inference

IDENTITY = "examples/data/identity.jsonl"
PROMPT = [{"role": "user", "content": "Who are you?"}]


def _train(tmp_path, name, **kw):
    kw = {"lora": True, "max_steps": 3, **kw}
    run = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], output_dir=str(tmp_path / name), **kw)
    return run.checkpoint


def _export(tmp_path, ckpt, name="merged", *extra) -> str:
    out = tmp_path / name
    assert main(["export", "--adapters", ckpt, "--merge", "--torch_dtype", "float32", "--output_dir", str(out),
                 *extra]) == 0
    return str(out)


def _logits(model, ids):
    """On the model's device (the accelerator for what swiftlike loads), returned on the CPU."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids], device=model.device)).logits[0].float().cpu()


@pytest.mark.slow
@pytest.mark.parametrize("variant", [{}, {"use_dora": True}, {"use_rslora": True, "lora_rank": 4}])
def test_merged_logits_equal_base_plus_adapter(tmp_path, variant, capsys):
    """LoRA, DoRA and rsLoRA stream shard by shard (export/stream.py)."""
    from transformers import AutoModelForCausalLM

    ckpt = _train(tmp_path, "run", **variant)
    capsys.readouterr()
    out = _export(tmp_path, ckpt)
    assert "merging in memory" not in capsys.readouterr().out
    adapted, tokenizer, template = load_for_inference(adapters=ckpt, torch_dtype="float32")
    ids = template.encode_prompt(PROMPT)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to(adapted.device)  # same kernels
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # W x + B (A x) against (W + B A) x: fp32 summed in another order (1.1e-5 seen on one logit of 1.8 million)
    torch.testing.assert_close(_logits(merged, ids), _logits(adapted, ids), rtol=1e-5, atol=3e-5)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["lm_head", "embed_tokens"])
def test_lora_on_a_tied_layer_merges_into_that_layer_alone(tmp_path, layer):
    """Qwen3-0.6B ties its output layer to the embedding: a LoRA on one of them trained that use of the shared weight
    only. Merged into the shared weight it changed both (exit 0, logits off by 3.4); now the export is untied."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ckpt = _train(tmp_path, "run", target_modules=["q_proj", layer])
    out = _export(tmp_path, ckpt)
    assert json.loads((Path(out) / "config.json").read_text())["tie_word_embeddings"] is False
    adapted, _, template = load_for_inference(adapters=ckpt, torch_dtype="float32")
    ids = template.encode_prompt(PROMPT)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to(adapted.device)
    torch.testing.assert_close(_logits(merged, ids), _logits(adapted, ids), rtol=1e-5, atol=3e-5)
    base = load_file(str(tmp_path / "run" / "base_model" / "model.safetensors"))["model.embed_tokens.weight"]
    weights = load_file(str(Path(out) / "model.safetensors"))
    kept = "model.embed_tokens.weight" if layer == "lm_head" else "lm_head.weight"
    assert torch.equal(weights[kept], base)  # the other use of the shared weight is the base's


@pytest.mark.slow
@pytest.mark.parametrize("variant", [{}, {"use_dora": True}, {"lora": False, "qlora": True}],
                         ids=["lora", "dora", "qlora"])
def test_the_streamed_merge_equals_the_in_memory_merge_shard_by_shard(tmp_path, variant):
    """The streamed tensors equal PEFT's in-memory merge (merge.py), the DoRA row rescaling and QLoRA's NF4 base
    (every weight transformers quantizes, through NF4 and back) included."""
    if variant.get("qlora"):
        pytest.importorskip("bitsandbytes")
    from safetensors.torch import load_file

    from swiftlike.export import merged_model
    from swiftlike.models.resolve import resolve

    ckpt = _train(tmp_path, "run", **variant)
    out = tmp_path / "streamed"
    assert main(["export", "--adapters", ckpt, "--merge", "--torch_dtype", "float32", "--max_shard_size", "10MB",
                 "--output_dir", str(out)]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    shards = {f: load_file(str(out / f)) for f in files}
    # up to 10 MB a shard; a larger tensor (the 39 MB embedding) is a shard of its own
    assert len(files) > 1 and all(len(t) == 1 or (out / f).stat().st_size <= 10e6 for f, t in shards.items())
    streamed = {k: v for t in shards.values() for k, v in t.items()}
    in_memory = merged_model(resolve(adapters=ckpt), torch.float32, None).state_dict()
    assert set(streamed) <= set(in_memory) and "model.layers.0.self_attn.q_proj.weight" in streamed
    for name, tensor in streamed.items():
        torch.testing.assert_close(tensor, in_memory[name], rtol=0, atol=2e-6)
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32" and config["use_cache"] is True
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]


@pytest.mark.slow
def test_qlora_merges_into_its_dequantized_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from swiftlike.export.merge import _load_dequantized_nf4
    from swiftlike.models import load_model

    ckpt = _train(tmp_path, "q", lora=False, qlora=True)
    out = _export(tmp_path, ckpt)
    base = json.loads((tmp_path / "q" / "checkpoint-3" / "args.json").read_text())["base_model_dir"]
    kw = dict(device=torch.device("cpu"))
    dequantized = load_model(base, torch.float32, **kw)
    _load_dequantized_nf4(dequantized, base, torch.float32, kw)
    original = load_model(base, torch.float32, **kw)
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(dict(dequantized.named_parameters())[q_proj], dict(original.named_parameters())[q_proj])
    reference = PeftModel.from_pretrained(dequantized, ckpt).eval()            # NF4 base, adapter unmerged
    _, _, template = load_for_inference(adapters=ckpt, torch_dtype="float32")
    ids = template.encode_prompt(PROMPT)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    torch.testing.assert_close(_logits(merged, ids), _logits(reference, ids), rtol=1e-5, atol=1e-5)
    # and within bitsandbytes' own (bf16 on CPU) accuracy of the 4-bit model the adapter was trained with
    quantized = PeftModel.from_pretrained(load_model(base, torch.float32, quantize_4bit=True), ckpt).eval()
    assert (_logits(merged, ids) - _logits(quantized, ids)).abs().max() < 0.5
    assert json.loads((tmp_path / "merged" / "config.json").read_text()).get("quantization_config") is None


_RELOAD = r"""
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path, messages = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
ids = ids["input_ids"] if isinstance(ids, dict) else ids
import torch
out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=24, do_sample=False)
assert not any(m.startswith("swiftlike") for m in sys.modules), "swiftlike was imported"
print(json.dumps({"prompt": ids, "new": out[0, len(ids):].tolist()}))
"""


@pytest.mark.slow
def test_export_reloads_with_plain_transformers_and_answers_as_wb_infer(tmp_path, capsys):
    ckpt = _train(tmp_path, "run", max_steps=30)
    out = _export(tmp_path, ckpt)
    assert main(["infer", "--adapters", ckpt, "--query", PROMPT[0]["content"], "--max_new_tokens", "24"]) == 0
    ours = capsys.readouterr().out.strip().splitlines()[-1]
    proc = subprocess.run([sys.executable, "-c", _RELOAD, out, json.dumps(PROMPT)], capture_output=True, text=True,
                          check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    _, tokenizer, template = load_for_inference(adapters=ckpt, torch_dtype="float32")
    assert got["prompt"] == template.encode_prompt(PROMPT)          # the exported chat template renders as ours
    assert got["new"][-1] in template.stop_token_ids                  # generate stops at the template's turn end
    answer = template.parse_response(tokenizer.decode(got["new"][:-1]))["content"]
    assert answer == ours and "Wren" in answer


@pytest.mark.parametrize("model_id", ["Qwen/Qwen3-8B", "meta-llama/Llama-3.2-1B-Instruct", "google/gemma-2-2b-it",
                                      "microsoft/phi-4", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"])
def test_shipped_chat_template_renders_generation_prompts_as_ours(model_id):
    """What export ships as chat_template (the tokenizer's own, else the bundled official Jinja) equals our
    rendering of generation prompts, for families with their own and with stand-in tokenizers."""
    from swiftlike.export.write import official_chat_template
    from swiftlike.models import load_tokenizer
    from swiftlike.templates import get_template

    tokenizer = load_tokenizer(model_id, miniature=True)
    template = get_template(model_id, tokenizer)
    jinja = official_chat_template(template.name, tokenizer)
    for chat in ([{"role": "user", "content": "Hi"}],
                 [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                  {"role": "user", "content": "and 3+3?"}]):
        official = tokenizer.apply_chat_template(chat, chat_template=jinja, add_generation_prompt=True,
                                                 tokenize=False)
        assert template.render_text(chat, add_generation_prompt=True) == official


@pytest.mark.slow
def test_reward_model_export_keeps_its_head(tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    run = wb.rm(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["preference-demo"], lora=True, max_steps=2,
                output_dir=str(tmp_path / "rm"))
    out = _export(tmp_path, run.checkpoint)
    said = capsys.readouterr().out  # how to load it names the class with the score head (it named the LM class)
    assert "loads with AutoModelForSequenceClassification" in said
    assert "AutoModelForSequenceClassification.from_pretrained(PATH)" in (Path(out) / "README.md").read_text()
    assert main(["export", "--adapters", run.checkpoint, "--merge", "--to", "gguf", "--output_dir",
                 str(tmp_path / "g" / "h")]) == 2  # refused before the merge (it failed after, naming a tensor)
    assert "--to gguf: a reward model" in capsys.readouterr().err and not (tmp_path / "g").exists()
    query, response = "What is the capital of France?", "Paris."
    assert main(["infer", "--adapters", run.checkpoint, "--query", query, "--response", response,
                 "--torch_dtype", "float32"]) == 0  # (the default on a GPU: bf16; the reload below: float32)
    ours = float(capsys.readouterr().out.strip().splitlines()[-1])
    _, _, template = load_for_inference(adapters=run.checkpoint, torch_dtype="float32")
    ids = template.encode({"messages": [{"role": "user", "content": query},
                                        {"role": "assistant", "content": response}]})["input_ids"]
    device = accel.device()  # where `wb infer` scored it
    model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).to(device).eval()
    with torch.no_grad():
        score = float(model(input_ids=torch.tensor([ids], device=device)).logits[0, 0])
    assert score == pytest.approx(ours, abs=1e-4)


@pytest.mark.slow
def test_full_checkpoint_exports_as_is(tmp_path):
    """A bf16 checkpoint exports in bf16 with the default --torch_dtype auto (as stored), bit for bit, on the CPU
    as on a GPU (`auto` once meant this machine's compute dtype: float32 on a CPU, twice the size)."""
    from safetensors.torch import load_file

    run = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], full=True, max_steps=2,
                 torch_dtype="bfloat16", output_dir=str(tmp_path / "full"), freeze_parameters=["embed_tokens"])
    out = tmp_path / "exported"
    assert main(["export", "--model", run.checkpoint, "--output_dir", str(out)]) == 0
    a, b = (load_file(f"{d}/model.safetensors") for d in (run.checkpoint, out))
    assert sorted(a) == sorted(b) and {t.dtype for t in b.values()} == {torch.bfloat16}
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert (out / "README.md").is_file() and json.loads((out / "args.json").read_text())["task"] == "sft"
    card = (out / "README.md").read_text()  # how it trained: the optimizer and the selection, no LoRA rank
    assert "| optim | adamw |" in card and "| freeze_parameters | `embed_tokens` |" in card and "lora_rank" not in card
    # --max_shard_size is read once, the same way on every path (a GiB size was transformers' traceback here)
    sharded = tmp_path / "sharded"
    assert main(["export", "--model", run.checkpoint, "--output_dir", str(sharded), "--max_shard_size", "4MiB"]) == 0
    index = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert sorted(index) == sorted(a) and len(set(index.values())) > 1


def test_export_refuses_unusable_shard_sizes_and_this_directory(tmp_path, capsys, monkeypatch):
    run = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], full=True, max_steps=1,
                 output_dir=str(tmp_path / "full"))
    capsys.readouterr()
    for size in ("500M", "0", "0GB"):
        assert main(["export", "--model", run.checkpoint, "--output_dir", str(tmp_path / "o"),
                     "--max_shard_size", size]) == 2
        assert capsys.readouterr().err.strip() == (f"wb: error: --max_shard_size {size!r} is not a size such as "
                                                   "5GB, 500MB or 2GiB")
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)  # `.` was a traceback (no name to write beside); `..` holds the shell's directory
    for out in (".", ".."):
        assert main(["export", "--model", run.checkpoint, "--output_dir", out, "--overwrite_output_dir"]) == 2
        assert f"--output_dir {out} is this directory or holds it" in capsys.readouterr().err
    assert here.is_dir() and not (tmp_path / "o").exists()


def test_what_a_killed_export_left_is_removed_by_the_next(tmp_path):
    from swiftlike.export.write import atomic_directory

    (tmp_path / ".out.tmp-999999999").mkdir()  # a process that no longer exists (kill -9 mid-export)
    (tmp_path / f".out.tmp-{os.getppid()}").mkdir()  # one that does: maybe still writing
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".out.tmp-{os.getppid()}", "out"]


def test_a_replaced_export_survives_a_failed_replace_and_files_are_readable(tmp_path, monkeypatch):
    """--overwrite_output_dir deleted the old export before renaming the new one (a failed rename left neither, or
    half of the old); safetensors writes 0600 files (a server running as another user could not read them); a
    failed export left the parent directories it had made."""
    from swiftlike.errors import UserError
    from swiftlike.export.write import atomic_directory

    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        (tmp / "model.safetensors").write_text("old")
        os.chmod(tmp / "model.safetensors", 0o600)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()
    real = os.replace

    def refused(src, dst):
        if Path(src).name.startswith(".out.tmp-"):
            raise PermissionError(1, "Operation not permitted")
        real(src, dst)
    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(UserError, match="cannot write the export: Operation not permitted"):
        with atomic_directory(out) as tmp:
            (tmp / "model.safetensors").write_text("new")
    monkeypatch.setattr(os, "replace", real)
    assert (out / "model.safetensors").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_directory(out) as tmp:  # replaced when it can be
        (tmp / "model.safetensors").write_text("new")
    assert (out / "model.safetensors").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "a" / "b" / "c"):
            raise RuntimeError("the merge failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / ".out.old-999999999").mkdir()  # killed between the two renames: the old export comes back
    real(out, tmp_path / ".out.old-999999999")
    with pytest.raises(RuntimeError):
        with atomic_directory(out):
            raise RuntimeError("the merge failed")
    assert (out / "model.safetensors").read_text() == "new"


def test_another_model_s_adapters_are_refused_before_the_streamed_merge(tmp_path):
    """It was a bare RuntimeError (tensor sizes) in the middle of writing the shards."""
    from safetensors.torch import save_file

    from swiftlike.errors import UserError
    from swiftlike.export.stream import stream_plan
    from swiftlike.models.loader import build_miniature

    build_miniature("Qwen/Qwen3-0.6B").save_pretrained(tmp_path / "base")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    name = "base_model.model.model.layers.0.mlp.down_proj"
    save_file({f"{name}.lora_A.weight": torch.zeros(2, 7), f"{name}.lora_B.weight": torch.zeros(5, 2)},
              str(adapter / "adapter_model.safetensors"))
    with pytest.raises(UserError, match=r"does not fit .*base: model.layers.0.mlp.down_proj.weight is \(64, 128\) "
                                        r"there, the adapter's update \(5, 7\)"):
        stream_plan(str(adapter), str(tmp_path / "base"))


def test_a_tied_base_that_stores_its_head_too_is_not_streamed(tmp_path):
    """Some converted checkpoints store lm_head.weight beside a tied embedding: the streamed merge took the head's
    LoRA and wrote it under a config that ties it away again; the in-memory merge unties it."""
    from safetensors.torch import load_file, save_file

    from swiftlike.export.stream import stream_plan
    from swiftlike.models.loader import build_miniature

    build_miniature("Qwen/Qwen3-0.6B").save_pretrained(tmp_path / "base")
    weights = load_file(str(tmp_path / "base" / "model.safetensors"))
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    save_file(weights, str(tmp_path / "base" / "model.safetensors"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    vocab, hidden = weights["lm_head.weight"].shape
    save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(2, hidden),
               "base_model.model.lm_head.lora_B.weight": torch.zeros(vocab, 2)},
              str(adapter / "adapter_model.safetensors"))
    assert stream_plan(str(adapter), str(tmp_path / "base")) == \
        "a LoRA on the output layer of a model that ties it to the embedding"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bad_input_one_line_each(tmp_path, capsys):
    (tmp_path / "no_args").mkdir()
    assert main(["export", "--adapters", str(tmp_path / "no_args"), "--merge"]) == 2
    assert "no adapter_config.json there; a LoRA checkpoint is expected" in capsys.readouterr().err
    (tmp_path / "no_args" / "adapter_config.json").write_text("{}")  # a PEFT adapter from elsewhere
    assert main(["export", "--adapters", str(tmp_path / "no_args"), "--merge"]) == 2
    assert "no args.json" in capsys.readouterr().err
    assert main(["export"]) == 2
    assert "give --adapters" in capsys.readouterr().err


@pytest.mark.slow
def test_refusals_and_no_half_written_export(tmp_path, capsys, monkeypatch):
    ckpt = _train(tmp_path, "run", max_steps=1)
    assert main(["export", "--adapters", ckpt, "--output_dir", str(tmp_path / "o")]) == 2
    assert "add --merge" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model.safetensors").write_text("someone's model")
    assert main(["export", "--adapters", ckpt, "--merge", "--output_dir", str(taken)]) == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert (taken / "model.safetensors").read_text() == "someone's model"
    run_dir = str(tmp_path / "run")  # holds the checkpoint itself: never replaced, even when asked to
    assert main(["export", "--adapters", ckpt, "--merge", "--output_dir", run_dir, "--overwrite_output_dir"]) == 2
    assert "which is exported from" in capsys.readouterr().err and (tmp_path / "run" / "checkpoint-1").is_dir()

    from safetensors.torch import load_file, save_file

    diverged = tmp_path / "diverged"
    __import__("shutil").copytree(ckpt, diverged)
    weights = load_file(diverged / "adapter_model.safetensors")
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, diverged / "adapter_model.safetensors")
    assert main(["export", "--adapters", str(diverged), "--merge", "--output_dir", str(tmp_path / "nan")]) == 2
    assert "holds NaN or inf values" in capsys.readouterr().err and not (tmp_path / "nan").exists()

    def disk_full(self, *a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("swiftlike.export.stream.save_file", disk_full)
    assert main(["export", "--adapters", ckpt, "--merge", "--output_dir", str(tmp_path / "new")]) == 2
    assert f"{tmp_path / 'new'}: cannot write the export: No space left on device" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".new", "new"))] == []


@pytest.mark.slow
def test_push_to_hub_offline_is_one_line_and_keeps_the_export(tmp_path, capsys, monkeypatch):
    """Offline (as here) the upload fails with one line; the folder that would be uploaded is complete, with its
    model card. A real upload was not run (no hub access from this machine)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt = _train(tmp_path, "run", max_steps=1)
    capsys.readouterr()
    out = tmp_path / "up"
    assert main(["export", "--adapters", ckpt, "--merge", "--output_dir", str(out), "--push_to_hub",
                 "--hub_model_id", "me/wren"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wb: error: cannot upload {out} to huggingface me/wren (offline")
    assert {"README.md", "args.json", "config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    assert main(["export", "--adapters", ckpt, "--merge", "--push_to_hub"]) == 2
    assert "--push_to_hub needs --hub_model_id ORG/NAME" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_trained_with_another_template_ships_that_template(tmp_path, capsys):
    from transformers import AutoTokenizer

    from swiftlike.models.loader import ASSETS

    run = wb.sft(model="Qwen/Qwen2.5-0.5B-Instruct", miniature=True, dataset=[IDENTITY], lora=True, max_steps=1,
                 template="qwq", output_dir=str(tmp_path / "qwq"))
    out = _export(tmp_path, run.checkpoint)
    shipped = AutoTokenizer.from_pretrained(out).chat_template
    assert shipped == (ASSETS / "chat_templates" / "qwq.jinja").read_text(encoding="utf-8")
    other = wb.sft(model="Qwen/Qwen2.5-0.5B-Instruct", miniature=True, dataset=[IDENTITY], lora=True, max_steps=1,
                   template="qwen3_instruct_2507", output_dir=str(tmp_path / "q3"))
    capsys.readouterr()
    assert main(["export", "--adapters", other.checkpoint, "--merge", "--output_dir", str(tmp_path / "o")]) == 2
    assert "no chat template ships with swiftlike" in capsys.readouterr().err


@pytest.mark.slow
def test_a_local_base_trained_with_a_named_template_ships_that_template(tmp_path):
    """A model directory the registry does not know, trained with --template qwen2_5: the export ships qwen2_5's
    official Jinja (it shipped the directory's own template, which renders another system prompt); trained with
    its own template, or a named one its own renders identically, it ships its own."""
    import shutil

    from transformers import AutoTokenizer

    from swiftlike.models.loader import ASSETS

    first = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], lora=True, max_steps=1,
                   output_dir=str(tmp_path / "first"))
    local = tmp_path / "local"
    shutil.copytree(json.loads((Path(first.checkpoint) / "args.json").read_text())["base_model_dir"], local)
    (local / "miniature.json").unlink(missing_ok=True)  # an ordinary local model now
    own = AutoTokenizer.from_pretrained(local).chat_template
    qwen2_5 = (ASSETS / "chat_templates" / "qwen2_5.jinja").read_text(encoding="utf-8")
    # (qwen3 ships no Jinja of ours: the directory's own renders as it does, so that one ships)
    for template, shipped in (("qwen2_5", qwen2_5), (None, own), ("qwen3", own)):
        run = wb.sft(model=str(local), dataset=[IDENTITY], lora=True, max_steps=1, template=template,
                     output_dir=str(tmp_path / f"run-{template}"))
        out = _export(tmp_path, run.checkpoint, f"out-{template}")
        assert AutoTokenizer.from_pretrained(out).chat_template == shipped, template
        # the card's hub metadata names no local path as base_model (the hub rejects that on upload)
        assert "base_model:" not in (Path(out) / "README.md").read_text().split("---")[1]


_CUSTOM_CONFIG = """from transformers import Qwen3Config
class CustomConfig(Qwen3Config):
    model_type = "custom_qwen3"
"""
_CUSTOM_MODEL = """from transformers import Qwen3ForCausalLM
from .configuration_custom import CustomConfig
class CustomForCausalLM(Qwen3ForCausalLM):
    config_class = CustomConfig
"""


@pytest.mark.slow
def test_a_model_with_its_own_code_needs_trust_and_exports_with_its_code(tmp_path, capsys):
    """A base whose config.json maps to its own Python files (InternLM's way): without --trust_remote_code every
    command says so in one line (transformers' traceback, after the merge for an export); with it, the streamed
    export carries the Python files and reloads with plain transformers (it lacked modeling_*.py)."""
    import shutil

    first = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], lora=True, max_steps=1,
                   output_dir=str(tmp_path / "first"))
    custom = tmp_path / "custom"
    shutil.copytree(json.loads((Path(first.checkpoint) / "args.json").read_text())["base_model_dir"], custom)
    (custom / "miniature.json").unlink(missing_ok=True)
    (custom / "configuration_custom.py").write_text(_CUSTOM_CONFIG)
    (custom / "modeling_custom.py").write_text(_CUSTOM_MODEL)
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="custom_qwen3", architectures=["CustomForCausalLM"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (custom / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    refusal = f"wb: error: {custom} needs its own Python code to load (auto_map in its config); add " \
              "--trust_remote_code if you trust it"
    common = ["--dataset", IDENTITY, "--lora", "--max_steps", "1", "--template", "qwen3"]
    assert main(["sft", "--model", str(custom), *common, "--output_dir", str(tmp_path / "no")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == refusal
    assert main(["sft", "--model", str(custom), *common, "--output_dir", str(tmp_path / "run"),
                 "--trust_remote_code"]) == 0
    ckpt = str(tmp_path / "run" / "checkpoint-1")
    capsys.readouterr()
    assert main(["export", "--adapters", ckpt, "--merge", "--output_dir", str(tmp_path / "no_export")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == refusal and not (tmp_path / "no_export").exists()
    out = _export(tmp_path, ckpt, "exported", "--trust_remote_code")
    assert {"configuration_custom.py", "modeling_custom.py"} <= {p.name for p in Path(out).iterdir()}
    code = ("import sys; from transformers import AutoModelForCausalLM; "
            "print(type(AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)).__name__)")
    loaded = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True, timeout=300)
    assert loaded.stdout.strip().splitlines()[-1] == "CustomForCausalLM", loaded.stderr[-2000:]

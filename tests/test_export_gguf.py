"""`wb export --to gguf`: verified with readers that are not ours — the `gguf` package's reader, and transformers'
GGUF loader (`from_pretrained(dir, gguf_file=...)`): logits and chat token ids equal the merged model's."""
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import swiftlike as wb
from swiftlike.cli.main import main
from swiftlike.models import build_miniature, load_tokenizer
from swiftlike.templates import get_template

gguf = pytest.importorskip("gguf")
CHAT = [{"role": "user", "content": "Who are you? 你好 🙂  two  spaces"}]


def _miniature(model_id: str):
    model = build_miniature(model_id)
    if model.config.model_type == "qwen3":
        # transformers' GGUF reader takes Qwen3's head_dim as its default 128 (every real Qwen3 has 128), so the
        # model it rebuilds only matches one with that head size
        from transformers import AutoModelForCausalLM

        config = model.config
        config.head_dim = 128
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tokenizer = load_tokenizer(model_id, miniature=True)
    return model.eval(), tokenizer, get_template(model_id, tokenizer)


BOUNDS = {"f16": 0.05, "q8_0": 0.1}


@pytest.mark.slow  # transformers' GGUF reader takes ~20 s for a 151k-token vocabulary
@pytest.mark.parametrize("model_id, gguf_type", [("Qwen/Qwen3-0.6B", "f16"), ("Qwen/Qwen2.5-0.5B-Instruct", "f16"),
                                                 ("meta-llama/Meta-Llama-3-8B-Instruct", "f16"),
                                                 ("meta-llama/Meta-Llama-3-8B-Instruct", "q8_0")])
def test_gguf_reloads_with_transformers(tmp_path, model_id, gguf_type):
    """f16: logits within f16 rounding (abs 0.05 on logits of magnitude ~8); q8_0: within 10% of the largest logit.
    Token ids of a chat (unicode, repeated spaces) are identical through the GGUF's own tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swiftlike.export.gguf import write_gguf

    model, tokenizer, template = _miniature(model_id)
    path = write_gguf(model, tokenizer, template, tmp_path / "m.gguf", gguf_type, "test")
    reread = gguf.GGUFReader(str(path))
    assert reread.fields["general.architecture"].contents() == model.config.model_type
    assert reread.fields["tokenizer.ggml.eos_token_id"].contents() == template.stop_token_ids[0]
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
    ids = template.encode_prompt(CHAT)
    with torch.no_grad():
        ours = model(input_ids=torch.tensor([ids])).logits[0]
        theirs = loaded(input_ids=torch.tensor([ids])).logits[0]
    limit = BOUNDS[gguf_type] * (1.0 if gguf_type == "f16" else float(ours.abs().max()))
    assert float((ours - theirs).abs().max()) < limit
    text = template.render_text(CHAT, add_generation_prompt=True)
    gguf_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert gguf_tokenizer(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)[
        "input_ids"]


@pytest.mark.slow
def test_cli_streams_a_gguf_equal_to_the_one_written_from_a_merged_model_in_memory(tmp_path):
    """`wb export --to gguf` writes the GGUF, an Ollama Modelfile and the card; it merges and writes tensor by
    tensor (export/stream.py), and the same adapter merged by PEFT in memory and written by write_gguf gives the
    same file contents, tensor for tensor; so does the streamed GGUF of a full checkpoint holding that model."""
    from swiftlike.export import merged_model
    from swiftlike.export.gguf import write_gguf
    from swiftlike.models.resolve import resolve

    run = wb.sft(model="Qwen/Qwen2.5-0.5B-Instruct", miniature=True, dataset=["examples/data/identity.jsonl"],
                 lora=True, max_steps=2, learning_rate=1e-2, output_dir=str(tmp_path / "run"))
    out = tmp_path / "streamed"
    assert main(["export", "--adapters", run.checkpoint, "--merge", "--to", "gguf", "--gguf_type", "q8_0",
                 "--torch_dtype", "float32", "--output_dir", str(out)]) == 0
    ref = resolve(adapters=run.checkpoint)
    tokenizer = load_tokenizer("Qwen/Qwen2.5-0.5B-Instruct", miniature=True)
    template = get_template("qwen2_5", tokenizer)
    model = merged_model(ref, torch.float32, tokenizer.pad_token_id)
    # the adapter leaves the (tied) embeddings as the base has them: what both GGUFs must write as token_embd
    base_embed = load_file(Path(ref.base) / "model.safetensors")["model.embed_tokens.weight"]
    assert torch.equal(model.get_input_embeddings().weight, base_embed.float())
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "args.json", "streamed-q8_0.gguf"]
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./streamed-q8_0.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    card = (out / "README.md").read_text()  # (it was a transformers card, titled by the training run)
    assert "library_name: gguf" in card and "# streamed\n" in card and "llama-cli -m streamed-q8_0.gguf" in card
    assert "from_pretrained" not in card
    streamed = gguf.GGUFReader(str(out / "streamed-q8_0.gguf"))  # (reading a 151k-token vocabulary takes seconds)
    tokenizer.chat_template = streamed.fields["tokenizer.chat_template"].contents()
    assert "<|im_start|>" in tokenizer.chat_template
    memory = gguf.GGUFReader(str(write_gguf(model, tokenizer, template, tmp_path / "memory.gguf", "q8_0", "m")))
    _same_tensors(streamed, memory)  # (in the shards' order: llama.cpp reads tensors by name)
    base = build_miniature("Qwen/Qwen2.5-0.5B-Instruct").state_dict()
    # the adapter moved some weights: the comparison is not of two copies of the base
    assert any(not torch.equal(tensor, base[name]) for name, tensor in model.state_dict().items())
    # a full checkpoint (here: that merged model, saved): its shards stream into the same GGUF tensors
    model.save_pretrained(tmp_path / "full")
    tokenizer.save_pretrained(tmp_path / "full")
    assert main(["export", "--model", str(tmp_path / "full"), "--to", "gguf", "--gguf_type", "q8_0",
                 "--output_dir", str(tmp_path / "full_gguf")]) == 0
    _same_tensors(gguf.GGUFReader(str(tmp_path / "full_gguf" / "full_gguf-q8_0.gguf")), memory)


@pytest.mark.slow
def test_a_merged_qlora_export_converts_to_gguf_as_it_is(tmp_path):
    """A QLoRA run's merged export keeps the run's args.json (train_type qlora); converting that export to GGUF
    writes its weights (f16-rounded), not the weights sent through NF4 a second time as the adapter merge does."""
    pytest.importorskip("bitsandbytes")
    run = wb.sft(model="Qwen/Qwen2.5-0.5B-Instruct", miniature=True, dataset=["examples/data/identity.jsonl"],
                 qlora=True, max_steps=1, output_dir=str(tmp_path / "run"))
    merged = tmp_path / "merged"
    assert main(["export", "--adapters", run.checkpoint, "--merge", "--torch_dtype", "float32", "--output_dir",
                 str(merged)]) == 0
    assert main(["export", "--model", str(merged), "--to", "gguf", "--output_dir", str(tmp_path / "g")]) == 0
    weights = load_file(merged / "model.safetensors")
    tensors = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "g" / "g-f16.gguf")).tensors}
    for ours, theirs in (("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"),
                         ("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight")):
        expected = weights[ours].to(torch.float16).float().numpy()
        written = np.asarray(tensors[theirs].data, dtype=np.float32).reshape(expected.shape)
        assert np.array_equal(written, expected), ours


@pytest.mark.slow
def test_a_gguf_of_a_bf16_base_is_merged_in_float32_and_rounded_once(tmp_path):
    """With --torch_dtype auto, an adapter on a bf16 base was merged in bf16 and then rounded to f16: the GGUF lost
    most of a small LoRA update. Now the f16 tensors are the float32 merge rounded once."""
    model = build_miniature("Qwen/Qwen2.5-0.5B-Instruct").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "base")
    load_tokenizer("Qwen/Qwen2.5-0.5B-Instruct", miniature=True).save_pretrained(tmp_path / "base")
    run = wb.sft(model=str(tmp_path / "base"), template="qwen2_5", dataset=["examples/data/identity.jsonl"],
                 lora=True, max_steps=2, learning_rate=1e-2, torch_dtype="float32", output_dir=str(tmp_path / "run"))
    assert main(["export", "--adapters", run.checkpoint, "--merge", "--torch_dtype", "float32", "--output_dir",
                 str(tmp_path / "hf")]) == 0
    assert main(["export", "--adapters", run.checkpoint, "--merge", "--to", "gguf", "--output_dir",
                 str(tmp_path / "g")]) == 0
    merged = load_file(tmp_path / "hf" / "model.safetensors")["model.layers.0.self_attn.v_proj.weight"]
    written = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "g" / "g-f16.gguf")).tensors}["blk.0.attn_v.weight"]
    assert np.array_equal(np.asarray(written.data, dtype=np.float32).reshape(merged.shape),
                          merged.to(torch.float16).float().numpy())


def _same_tensors(a, b) -> None:
    tensors = [{t.name: t for t in reader.tensors} for reader in (a, b)]
    assert sorted(tensors[0]) == sorted(tensors[1])
    for name, x in tensors[0].items():
        y = tensors[1][name]
        assert x.tensor_type == y.tensor_type and list(x.shape) == list(y.shape), name
        if not (x.data == y.data).all():  # how far apart, in values (what a failure on another machine shows)
            far = np.abs(gguf.quants.dequantize(x.data, x.tensor_type) - gguf.quants.dequantize(y.data, y.tensor_type))
            raise AssertionError(f"{name}: the files' values differ, by at most {far.max():.3g} "
                                 f"({int((far > 0).sum())} of {far.size})")


@pytest.mark.slow
def test_llama3_rope_scaling_becomes_rope_freqs(tmp_path):
    """Llama-3.1+: the "llama3" RoPE scaling is written as llama.cpp's rope_freqs tensor. Its values divide the
    base frequencies into exactly transformers' llama3 frequencies, and the GGUF's weights under the run's config
    give the merged model's logits on a prompt long enough for the scaling to matter (without it: 0.5 apart)."""
    from transformers import AutoModelForCausalLM
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from swiftlike.export.gguf import write_gguf

    model, tokenizer, template = _miniature("meta-llama/Llama-3.2-1B-Instruct")
    config, head_dim = model.config, model.config.head_dim
    path = write_gguf(model, tokenizer, template, tmp_path / "m.gguf", "f16", "test")
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # llama.cpp's name; it refuses "gpt2"
    tensors = {t.name: t for t in reader.tensors}
    factors = torch.tensor(tensors["rope_freqs.weight"].data, dtype=torch.float64)
    base = 1.0 / config.rope_parameters["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    llama3, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    torch.testing.assert_close(base / factors, llama3.double(), rtol=1e-6, atol=0)
    assert factors.min() == 1.0 and factors.max() == config.rope_parameters["factor"]
    ids = template.encode_prompt([{"role": "user", "content": "Who are you? " * 20}])
    with torch.no_grad():
        ours = model(input_ids=torch.tensor([ids])).logits[0]
        scaled = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32,
                                                      config=config)(input_ids=torch.tensor([ids])).logits[0]
        plain = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)(
            input_ids=torch.tensor([ids])).logits[0]
    assert float((ours - scaled).abs().max()) < 0.05
    assert float((ours - plain).abs().max()) > 0.1  # transformers' reader alone ignores rope_freqs


@pytest.mark.parametrize("post_processor", [False, True])
def test_the_gguf_says_the_tokenizer_adds_bos_as_the_tokenizer_does(tmp_path, post_processor):
    """llama.cpp prepends BOS to raw prompts only when `tokenizer.ggml.add_bos_token` says so. Llama-3's real
    tokenizer adds BOS through its post-processor while its `add_bos_token` attribute reads False: the flag follows
    what the tokenizer does, not the attribute."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from swiftlike.export.gguf import write_gguf

    model, tokenizer, template = _miniature("meta-llama/Llama-3.2-1B-Instruct")
    if post_processor:  # the real Llama-3 tokenizer's shape
        backend = tokenizer.backend_tokenizer
        bos = tokenizer.bos_token
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_token_id)])
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=tokenizer.eos_token)
        assert not getattr(tokenizer, "add_bos_token", False)
    assert tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    path = write_gguf(model, tokenizer, template, tmp_path / "m.gguf", "f16", "test")
    fields = gguf.GGUFReader(str(path)).fields
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True
    assert fields["tokenizer.ggml.add_eos_token"].contents() is False


def test_other_rope_scalings_are_refused():
    from transformers import LlamaConfig

    from swiftlike.errors import UserError
    from swiftlike.export.gguf import check_supported

    config = LlamaConfig(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(UserError, match="'linear' RoPE scaling is not written"):
        check_supported(config)


@pytest.mark.parametrize("model_id, message", [
    ("google/gemma-2-2b-it", "--to gguf writes llama, qwen2, qwen3 models, not gemma2"),
])
def test_unsupported_architectures_are_refused_before_merging(tmp_path, capsys, model_id, message):
    model = build_miniature(model_id)
    model.save_pretrained(tmp_path / "m")
    load_tokenizer(model_id, miniature=True).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "args.json").write_text('{"model": "%s", "task": "sft"}' % model_id)
    assert main(["export", "--model", str(tmp_path / "m"), "--to", "gguf", "--output_dir", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

"""Model sources as real users meet them: hub downloads (weights only when needed, an older repository's .bin,
nothing useful), the hub library's errors in words, and local directories missing a part: one line each."""
import json
import pickle
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch

from swiftlike import hub
from swiftlike.errors import UserError
from swiftlike.models.loader import build_miniature, load_model, load_tokenizer, model_config


def _fake_hub(monkeypatch, repo: Path, asked: list):
    """snapshot_download over a local folder: copies the files that match allow_patterns, as the hub does."""
    import fnmatch

    def snapshot_download(model_id, allow_patterns):
        asked.append(list(allow_patterns))
        out = repo.parent / "snapshot"
        out.mkdir(exist_ok=True)
        for f in repo.iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                shutil.copy(f, out / f.name)
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


def _model_dir(path: Path, qwen3_tokenizer, bin_weights: bool = False) -> Path:
    model = build_miniature("Qwen/Qwen3-0.6B")
    model.save_pretrained(path)
    if bin_weights:  # as repositories from before safetensors hold them
        for f in path.glob("*.safetensors"):
            f.unlink()
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    qwen3_tokenizer.save_pretrained(path)
    return path


def test_an_older_repository_s_bin_weights_are_downloaded_when_it_has_no_safetensors(tmp_path, monkeypatch,
                                                                                      qwen3_tokenizer):
    repo, asked = _model_dir(tmp_path / "repo", qwen3_tokenizer, bin_weights=True), []
    assert list(repo.glob("pytorch_model*.bin")) and not list(repo.glob("*.safetensors"))
    _fake_hub(monkeypatch, repo, asked)
    path = hub.download("acme/old-model")
    assert len(asked) == 3 and "pytorch_model*.bin" in asked[-1]
    assert load_model(path, torch.float32).config.model_type == "qwen3"  # (loaded weights-only)

    for f in repo.glob("pytorch_model*"):
        f.unlink()
    shutil.rmtree(tmp_path / "snapshot")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UserError, match=r"'acme/old-model' on huggingface holds no weights \(\*.safetensors or "):
        hub.download("acme/old-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what a config-only download left in the cache
    with pytest.raises(UserError, match=r"the cached copy of 'acme/old-model' \(offline mode is on\) holds no "):
        hub.download("acme/old-model")
    assert hub.download("acme/old-model", config_only=True)  # a config is all some commands need


def test_a_repository_s_other_copy_of_its_weights_is_not_downloaded(tmp_path, monkeypatch, qwen3_tokenizer):
    """Mistral's repositories hold consolidated.safetensors beside transformers' shards: both were downloaded."""
    repo, asked = _model_dir(tmp_path / "repo", qwen3_tokenizer), []
    shutil.copy(repo / "model.safetensors", repo / "consolidated.safetensors")
    _fake_hub(monkeypatch, repo, asked)
    path = Path(hub.download("mistralai/like-this"))
    assert (path / "model.safetensors").is_file() and not (path / "consolidated.safetensors").exists()
    assert len(asked) == 1
    (repo / "model.safetensors").rename(repo / "weights.safetensors")  # another name: any safetensors then
    shutil.rmtree(path)
    assert (Path(hub.download("acme/other-names")) / "weights.safetensors").is_file()


@pytest.mark.parametrize("code, status, said", [
    ("GatedRepo", 401, "a gated repository: accept its terms on the model's page, then log in"),
    ("RepoNotFound", 401, "no such repository (or a private one: log in with `hf auth login`"),
    ("RevisionNotFound", 404, "no such revision in the repository"),
])
def test_hub_errors_are_said_in_words(monkeypatch, code, status, said):
    from huggingface_hub.utils import hf_raise_for_status

    http = pytest.importorskip("httpx2")  # (what huggingface_hub 2 answers with)

    def snapshot_download(model_id, allow_patterns):  # the hub's answer, raised by the hub library's own check
        request = http.Request("GET", f"https://huggingface.co/api/models/{model_id}/revision/main")
        hf_raise_for_status(http.Response(status, request=request, headers={
            "X-Error-Code": code, "X-Error-Message": "Access is restricted. Please log in.", "X-Request-Id": "r1"}))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(UserError) as e:
        hub.download("meta-llama/Llama-3.1-8B")
    assert said in str(e.value) and "\n" not in str(e.value)


def test_a_path_is_never_asked_of_the_hub(tmp_path):
    (tmp_path / "model.safetensors").write_text("")
    for model, said in ((str(tmp_path / "typo"), "no such directory"), ("./typo_dir", "no such directory"),
                        (str(tmp_path / "model.safetensors"), "a file, not a model directory")):
        with pytest.raises(UserError, match=said):
            hub.download(model)


def test_local_directories_missing_a_part(tmp_path, qwen3_tokenizer):
    full = _model_dir(tmp_path / "full", qwen3_tokenizer)
    no_tokenizer = tmp_path / "no_tok"
    shutil.copytree(full, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*", "vocab*", "merges*", "chat*"))
    with pytest.raises(UserError, match="no_tok: no tokenizer there"):
        load_tokenizer(str(no_tokenizer))
    no_config = tmp_path / "no_config"
    shutil.copytree(full, no_config, ignore=shutil.ignore_patterns("config.json"))
    with pytest.raises(UserError, match="no_config: no config.json there"):
        model_config(str(no_config))
    no_weights = tmp_path / "no_weights"
    shutil.copytree(full, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(UserError, match="no_weights: cannot load the model's weights: .*no file named"):
        load_model(str(no_weights), torch.float32)

    class Payload:  # a pickle that would run code when unpickled
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil"
    shutil.copytree(no_weights, evil)
    with open(evil / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": Payload()}, f)
    with pytest.raises(UserError, match="hold objects other than tensors, which are not loaded"):
        load_model(str(evil), torch.float32)

    sharded = tmp_path / "sharded"
    build_miniature("Qwen/Qwen3-0.6B").save_pretrained(sharded, max_shard_size="2MB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and json.loads((sharded / "model.safetensors.index.json").read_text())
    shards[-1].unlink()
    with pytest.raises(UserError, match=f"cannot load the model's weights: .*{shards[-1].name}"):
        load_model(str(sharded), torch.float32)

    cut = tmp_path / "cut"  # a copy that stopped short (it was safetensors' bare traceback, naming no file)
    shutil.copytree(full, cut)
    data = (full / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match="cut: a weights file there is damaged or incomplete \\(.*\\); copy or "):
        load_model(str(cut), torch.float32)
    from swiftlike.export.stream import stream_plan

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    (adapter / "adapter_model.safetensors").write_bytes(data[:100])
    with pytest.raises(UserError, match="adapter: a weights file there is damaged"):
        stream_plan(str(adapter), str(full))


def test_qwen3_base_models_end_texts_with_endoftext():
    """The pretrained (-Base) checkpoints' tokenizer and config end a text with <|endoftext|>, the instruct ones'
    with <|im_end|>; wb pt appends the tokenizer's."""
    from swiftlike.models.loader import registered_config
    from swiftlike.registry import find_model

    base, instruct = load_tokenizer("Qwen/Qwen3-8B-Base"), load_tokenizer("Qwen/Qwen3-8B")
    assert (base.eos_token, instruct.eos_token) == ("<|endoftext|>", "<|im_end|>")
    config = registered_config(find_model("Qwen/Qwen3-8B-Base"))
    assert (config.eos_token_id, config.max_position_embeddings) == (151643, 32768)
    assert registered_config(find_model("Qwen/Qwen3-30B-A3B-Base")).eos_token_id == 151643
    assert registered_config(find_model("Qwen/Qwen3-8B")).eos_token_id == 151645


def test_modelscope_is_asked_for_its_own_id_of_a_registered_model(monkeypatch):
    import sys
    import types

    asked = []
    fake = types.ModuleType("modelscope")
    fake.snapshot_download = lambda model_id, allow_patterns: asked.append(model_id) or "/nowhere"
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    from swiftlike.models.loader import config_dir

    config_dir("google/gemma-2-2b-it", "modelscope")
    config_dir("Qwen/Qwen3-8B-Base", "modelscope")  # (the same id on both hubs)
    assert asked == ["LLM-Research/gemma-2-2b-it", "Qwen/Qwen3-8B-Base"]

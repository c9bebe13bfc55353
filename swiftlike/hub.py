"""Resolve --model to a local directory: local paths as they are, hub ids downloaded (and cached)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError, one_line

CONFIG_FILES = ["config.json", "generation_config.json", "tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json",
                "*.model", "chat_template*", "preprocessor_config.json", "video_preprocessor_config.json"]


def is_local(model: str) -> bool:
    return Path(model).expanduser().is_dir()


# what a failed download means, by the hub library's exception class (GatedRepoError is a RepositoryNotFoundError)
_REASONS = {
    "GatedRepoError": "a gated repository: accept its terms on the model's page, then log in (`hf auth login`, or "
                      "set HF_TOKEN)",
    "RepositoryNotFoundError": "no such repository (or a private one: log in with `hf auth login`, or set HF_TOKEN)",
    "RevisionNotFoundError": "no such revision in the repository",
    "DisabledRepoError": "the repository is disabled",
}
# transformers' layout (model.safetensors, model-0000N-of-0000M.safetensors): not a repository's other copies of the
# same weights (Mistral's consolidated.safetensors doubled the download); then any safetensors; then an older
# repository's pickles (loaded weights-only)
WEIGHTS = ["model*.safetensors", "model.safetensors.index.json"]
OTHER_WEIGHTS = (["*.safetensors", "*.safetensors.index.json"], ["pytorch_model*.bin", "pytorch_model.bin.index.json"])


def _looks_like_path(model: str) -> bool:
    """A --model that can only mean a local path (hub ids are `name` or `org/name`)."""
    return model.startswith(("/", "./", "../", "~", "\\")) or model.count("/") > 1 or Path(model).exists()


def has_weights(directory: Path) -> bool:
    return any(directory.glob("*.safetensors")) or any(directory.glob("pytorch_model*.bin"))


def download(model_id: str, hub: str = "huggingface", config_only: bool = False, with_code: bool = False,
             miniature: bool = False) -> str:
    """Snapshot a hub repository (weights only when needed: safetensors, else an older repository's weights-only
    .bin; Python files only for trust_remote_code). `miniature`: the config and tokenizer of an unregistered id, for
    a --miniature (the error says so)."""
    if _looks_like_path(model_id):
        what = "a file, not a model directory" if Path(model_id).expanduser().is_file() else "no such directory"
        raise UserError(f"--model {model_id}: {what}")
    patterns = CONFIG_FILES if config_only else CONFIG_FILES + WEIGHTS
    if with_code:
        patterns = patterns + ["*.py"]
    offline = " (offline mode is on)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    try:
        path = _snapshot(model_id, hub, patterns)
        for other in () if config_only else OTHER_WEIGHTS:
            if has_weights(Path(path)):
                break
            path = _snapshot(model_id, hub, other)
    except UserError:
        raise
    except Exception as e:  # network, auth, missing repo: all become one clear line
        reason = _reason(e)
        if miniature:
            raise UserError(f"a miniature of {model_id!r} needs its config.json and tokenizer files, which could not "
                            f"be fetched from {hub}{offline}: {reason}. Registered ids (`wb models`) need no network; "
                            "otherwise pass a local directory holding them with --model") from None
        raise UserError(f"cannot get {model_id!r} from {hub}{offline}: {reason}. Pass a local directory with "
                        "--model, or add --miniature to try the pipeline on a tiny random model offline") from None
    if not config_only and not has_weights(Path(path)):
        where = f"the cached copy of {model_id!r}{offline}" if offline else f"{model_id!r} on {hub}"
        raise UserError(f"{where} holds no weights (*.safetensors or pytorch_model*.bin)")
    return path


def _snapshot(model_id: str, hub: str, patterns: list[str]) -> str:
    if hub == "modelscope":
        try:
            from modelscope import snapshot_download as ms_download
        except ImportError:
            raise UserError("--hub modelscope needs the modelscope package: pip install modelscope") from None
        return ms_download(model_id, allow_patterns=patterns)
    from huggingface_hub import snapshot_download

    return snapshot_download(model_id, allow_patterns=patterns)


def _reason(e: Exception) -> str:
    """What went wrong, in one line: the hub library's meaning of its exception, else its message's first lines."""
    for cls in type(e).__mro__:
        if cls.__name__ in _REASONS:
            return _REASONS[cls.__name__]
    return one_line(e)

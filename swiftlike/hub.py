"""Resolve --model to a local directory: local paths as they are, hub ids downloaded (and cached)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

CONFIG_FILES = ["config.json", "generation_config.json", "tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json",
                "*.model", "chat_template*", "preprocessor_config.json", "video_preprocessor_config.json"]


def is_local(model: str) -> bool:
    return Path(model).expanduser().is_dir()


def download(model_id: str, hub: str = "huggingface", config_only: bool = False, with_code: bool = False,
             miniature: bool = False) -> str:
    """Snapshot a hub repository (weights only when needed; Python files only for trust_remote_code).
    `miniature`: the config and tokenizer of an unregistered id, for a --miniature (the error says so)."""
    patterns = CONFIG_FILES if config_only else CONFIG_FILES + ["*.safetensors", "*.safetensors.index.json"]
    if with_code:
        patterns = patterns + ["*.py"]
    try:
        if hub == "modelscope":
            try:
                from modelscope import snapshot_download as ms_download
            except ImportError:
                raise UserError("--hub modelscope needs the modelscope package: pip install modelscope") from None
            return ms_download(model_id, allow_patterns=patterns)
        from huggingface_hub import snapshot_download

        return snapshot_download(model_id, allow_patterns=patterns)
    except UserError:
        raise
    except Exception as e:  # network, auth, missing repo: all become one clear line
        offline = " (offline mode is on)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if miniature:
            raise UserError(f"a miniature of {model_id!r} needs its config.json and tokenizer files, which could not "
                            f"be fetched from {hub}{offline}: {reason}. Registered ids (`wb models`) need no network; "
                            "otherwise pass a local directory holding them with --model") from None
        raise UserError(f"cannot get {model_id!r} from {hub}{offline}: {reason}. Pass a local directory with "
                        "--model, or add --miniature to try the pipeline on a tiny random model offline") from None

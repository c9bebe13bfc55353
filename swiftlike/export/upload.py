"""`--push_to_hub`: an export (with its model card) to a Hugging Face or ModelScope repository."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError


def push(folder: Path, repo_id: str, hub: str, private: bool, token: str | None) -> str:
    """Create the repository when missing and upload the folder; returns the repository's address."""
    try:
        if hub == "modelscope":
            try:
                from modelscope.hub.api import HubApi
            except ImportError:
                raise UserError("--hub modelscope needs the modelscope package: pip install modelscope") from None
            api = HubApi()
            if token:
                api.login(token)
            api.push_model(model_id=repo_id, model_dir=str(folder), visibility=1 if private else 5)
            return f"https://modelscope.cn/models/{repo_id}"
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload with swiftlike wb export")
        return f"https://huggingface.co/{repo_id}"
    except UserError:
        raise
    except Exception as e:  # offline, auth, quota: one line; the export on disk stays as written
        offline = " (offline mode is on)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot upload {folder} to {hub} {repo_id}{offline}: {reason}; the export is kept "
                        "there") from None

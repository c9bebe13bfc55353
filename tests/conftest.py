import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# encoded-data cache of the test session: never the user's own
os.environ["WB_CACHE_DIR"] = tempfile.mkdtemp(prefix="wb-test-cache-")

DATA = Path(__file__).parent / "data"
QWEN3_TOKENIZER = Path(__file__).parents[1] / "swiftlike" / "assets" / "tokenizers" / "qwen3"


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN3_TOKENIZER)

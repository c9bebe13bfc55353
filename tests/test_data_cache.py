"""Parallel encoding gives the same rows; the encoding cache is keyed by everything that matters."""
import json

from swiftlike.config import SFTConfig
from swiftlike.data.dataset import encode_rows
from swiftlike.pipelines.sft import prepare_data
from swiftlike.templates import get_template


def _rows(n):
    return [{"messages": [{"role": "user", "content": f"question {i} " * (1 + i % 7)},
                          {"role": "assistant", "content": f"answer {i} " * (1 + i % 11)}]} for i in range(n)]


def test_parallel_encoding_equals_serial(qwen3_tokenizer):
    template = get_template("qwen3", qwen3_tokenizer)
    rows = _rows(1300)
    serial, s1 = encode_rows(rows, template, 64)
    parallel, s2 = encode_rows(rows, template, 64, num_proc=2)
    assert serial == parallel and s1.dropped == s2.dropped and s1.lengths == s2.lengths


def test_cache_hits_only_for_identical_inputs(tmp_path, qwen3_tokenizer):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(30)))
    template = get_template("qwen3", qwen3_tokenizer)

    def run(**kw):
        cfg = SFTConfig(model="Qwen/Qwen3-0.6B", dataset=[str(data)], cache_dir=str(tmp_path / "cache"), **kw)
        return prepare_data(cfg.validate(), template)

    first, _, stats = run()
    assert not stats.cached
    again, _, stats = run()
    assert stats.cached and again == first
    assert not run(max_length=40)[2].cached                 # an encoding option changed
    assert not run(dataset_cache=False)[2].cached          # asked not to use the cache
    data.write_text(data.read_text() + json.dumps(_rows(31)[-1]) + "\n")
    changed, _, stats = run()                              # the data changed
    assert not stats.cached and len(changed) == 31
    other = get_template("qwen3", qwen3_tokenizer, loss_scope="all")
    cfg = SFTConfig(model="Qwen/Qwen3-0.6B", dataset=[str(data)], cache_dir=str(tmp_path / "cache")).validate()
    assert not prepare_data(cfg, other)[2].cached          # the template's loss scope changed

"""`wb pt`: plain text, every token trained, long texts split into max_length pieces."""
import json

import pytest

from conftest import DATA
from swiftlike.cli.main import main
from swiftlike.data.dataset import encode_rows, load_rows
from swiftlike.templates.text import TextTemplate


def test_text_rows_split_into_pieces_that_keep_every_token(qwen3_tokenizer):
    rows = load_rows([str(DATA / "c4_sample.jsonl")], task="pt")
    template = TextTemplate(qwen3_tokenizer)
    whole = template.encode_batch(rows)
    pieces, stats = encode_rows(rows, template, 128, truncation_strategy="split")
    # each piece starts with the token ending the one before (a piece's first token is predicted by nothing):
    # every token after a text's first is a target exactly once
    assert sum(p["length"] - 1 for p in pieces) == sum(w["length"] - 1 for w in whole)
    starts = iter(pieces)
    for w in whole:
        rebuilt = list(next(starts)["input_ids"])
        while len(rebuilt) < w["length"]:
            rebuilt += next(starts)["input_ids"][1:]
        assert rebuilt == w["input_ids"]
    assert all(p["length"] <= 128 and p["labels"] == p["input_ids"] for p in pieces)
    assert whole[0]["input_ids"][-1] == qwen3_tokenizer.eos_token_id
    assert f"split {sum(w['length'] > 128 for w in whole)}" in stats.report()


def test_pt_needs_text(tmp_path, capsys):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"content": "x"}) + "\n")
    assert main(["pt", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", str(p),
                 "--output_dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"wb: error: {p}:1: pretraining rows need a 'text' field (fields: content)"


@pytest.mark.slow
def test_wb_pt_trains_and_records_the_task(tmp_path):
    out = tmp_path / "run"
    assert main(["pt", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", str(DATA / "c4_sample.jsonl"),
                 "--max_length", "128", "--lora", "--learning_rate", "1e-2", "--max_steps", "12",
                 "--output_dir", str(out)]) == 0
    args = json.loads((out / "checkpoint-12" / "args.json").read_text())
    assert args["task"] == "pt" and args["truncation_strategy"] == "split"
    history = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())["log_history"]
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.parametrize("model, bos", [("meta-llama/Llama-3.1-8B-Instruct", True), ("google/gemma-3-1b-it", True),
                                        ("Qwen/Qwen3-0.6B", False)])
def test_texts_start_with_the_begin_of_text_token_the_tokenizer_adds(model, bos):
    from swiftlike.models import load_tokenizer

    tokenizer = load_tokenizer(model, miniature=True)
    ids = TextTemplate(tokenizer).encode_batch([{"text": "Hello world"}])[0]["input_ids"]
    plain = tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    assert ids == ([tokenizer.bos_token_id] if bos else []) + plain + [tokenizer.eos_token_id]


def test_a_streamed_long_text_trains_in_micro_batches_of_the_batch_size(qwen3_tokenizer):
    """--streaming / --lazy_tokenize with --truncation_strategy split: a long text's pieces train in the step that
    drew it, at most --per_device_train_batch_size pieces (of --max_length tokens) a micro-batch."""
    from swiftlike.data.collate import collate_padding_free
    from swiftlike.data.stream import LazyCollate

    collate = LazyCollate(TextTemplate(qwen3_tokenizer), 64, "split", collate_padding_free, False)
    rows = [{"text": "word " * 1000}, {"text": "short one"}]
    batches = collate.micro_batches(rows, 2)
    pieces = collate.encode(rows)
    assert len(pieces) > 10 and len(batches) == -(-len(pieces) // 2)
    assert all(b["input_ids"].numel() <= 2 * 64 for b in batches)
    assert sum(b["input_ids"].numel() for b in batches) == sum(p["length"] for p in pieces)
    assert collate.empty()["targets"].eq(-100).all()  # (trains nothing)

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
    assert sum(p["length"] for p in pieces) == sum(w["length"] for w in whole)
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

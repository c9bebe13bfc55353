"""Preference, KTO and GRPO rows become their canonical forms (real samples where we have them)."""
import json

import pytest

from conftest import DATA
from swiftlike.data.formats import RowError, to_canonical

PROMPT = [{"role": "user", "content": "2+2?"}]


def test_sharegpt_pairwise_real_sample():
    raw = json.loads((DATA / "dpo_en_sample.json").read_text())[0]
    row = to_canonical(raw, "preference")
    prompt = [{"role": "user", "content": raw["conversations"][0]["value"]}]
    assert row == {"messages": prompt + [{"role": "assistant", "content": raw["chosen"]["value"]}],
                   "rejected_messages": prompt + [{"role": "assistant", "content": raw["rejected"]["value"]}]}


@pytest.mark.parametrize("raw", [
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    {"messages": PROMPT, "chosen": "4", "rejected": "5"},
    {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "4"}],
     "rejected": [{"role": "assistant", "content": "5"}]},
    {"chosen": PROMPT + [{"role": "assistant", "content": "4"}], "rejected": PROMPT + [{"role": "assistant",
                                                                                         "content": "5"}]},
    {"messages": PROMPT + [{"role": "assistant", "content": "4"}], "rejected_response": "5"},
])
def test_preference_forms(raw):
    assert to_canonical(raw, "preference") == {
        "messages": PROMPT + [{"role": "assistant", "content": "4"}],
        "rejected_messages": PROMPT + [{"role": "assistant", "content": "5"}]}


@pytest.mark.parametrize("raw, message", [
    ({"prompt": "q", "chosen": "a"}, "no 'rejected', 'rejected_response' or 'rejected_messages'"),
    ({"messages": PROMPT, "rejected_response": "5"}, "must end with the chosen assistant turn"),
])
def test_bad_preference_rows(raw, message):
    with pytest.raises(RowError, match=message):
        to_canonical(raw, "preference")


def test_kto_real_sample_and_label_check():
    raw = json.loads((DATA / "kto_en_sample.json").read_text())[0]
    row = to_canonical(raw, "kto")
    assert row["label"] is raw["label"] and row["messages"][-1]["role"] == "assistant"
    assert to_canonical({"prompt": "q", "completion": "a", "label": False}, "kto") == {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": False}
    with pytest.raises(RowError, match="boolean 'label', got 'yes'"):
        to_canonical({"prompt": "q", "completion": "a", "label": "yes"}, "kto")


def test_grpo_keeps_extra_columns_and_drops_reference_answers():
    assert to_canonical({"prompt": "What is 2+2?", "solution": "4"}, "grpo") == {
        "messages": [{"role": "user", "content": "What is 2+2?"}], "solution": "4"}
    raw = {"messages": PROMPT + [{"role": "assistant", "content": "4"}], "answer": "4"}
    assert to_canonical(raw, "grpo") == {"messages": PROMPT, "answer": "4"}
    with pytest.raises(RowError, match="must end with a user message"):
        to_canonical({"messages": [{"role": "system", "content": "s"}]}, "grpo")


def test_identical_pairs_are_counted_not_fatal(tmp_path):
    from swiftlike.data.dataset import DataStats, load_rows

    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "a"}) + "\n"
                 + json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    stats = DataStats()
    assert len(load_rows([str(p)], task="preference", stats=stats)) == 1
    assert stats.dropped == {"chosen equals rejected": 1}

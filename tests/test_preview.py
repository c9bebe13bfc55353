"""`wb data preview` for every training command's data: the task inferred or chosen, the same encoding as
training, and a --json shape per task."""
import json

import pytest

from swiftlike.cli.main import main
from swiftlike.pipelines.preview import _looks_like, infer_task

QWEN = ["--model", "Qwen/Qwen3-0.6B"]
Q = [{"role": "user", "content": "What is 2+2?"}]
A = [{"role": "assistant", "content": "4"}]


@pytest.fixture(scope="module")
def qwen3(qwen3_tokenizer):
    from swiftlike.templates import get_template

    return get_template("qwen3", qwen3_tokenizer)


def _preview(capsys, *args) -> tuple[str, str]:
    assert main(["data", "preview", *QWEN, *args]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def _json(capsys, *args) -> list[dict]:
    out, _ = _preview(capsys, *args, "--json")
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("row, task", [
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, "dpo"),
    ({"messages": Q + A, "rejected_response": "5"}, "dpo"),
    ({"chosen_messages": Q + A, "rejected_messages": Q + A}, "dpo"),
    ({"messages": Q + A, "label": True}, "kto"),
    ({"prompt": "q", "completion": "a", "kto_tag": False}, "kto"),
    ({"text": "plain text"}, "pt"),
    ({"messages": Q, "solution": "4"}, "grpo"),
    ({"prompt": "q", "solution": "4"}, "grpo"),
    ({"conversations": [{"from": "human", "value": "q"}]}, "grpo"),
    ({"messages": Q + A}, "sft"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "sft"),
    ({"instruction": "q", "output": "a"}, "sft"),
    ({"prompt": "q", "completion": "a"}, "sft"),
    ({"messages": Q + A, "text": "also a text column"}, "sft"),
])
def test_task_is_inferred_from_the_row(row, task):
    assert _looks_like(row)[0] == task


def test_task_of_sources(tmp_path):
    from swiftlike.errors import UserError

    assert infer_task(["preference-demo"])[0] == "dpo"          # a named dataset says its task
    assert infer_task(["arithmetic#5"])[0] == "grpo"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question": "q", "solution": "4"}) + "\n")
    assert infer_task([str(prompts)], {"question": "prompt"})[0] == "grpo"  # --columns apply first
    with pytest.raises(UserError, match=r"look like data of different commands .*: dpo, .*: sft\); choose one with "
                                        r"--task"):
        infer_task(["tests/data/dpo_en_sample.json", "tests/data/alpaca_en_sample.json"])


def test_preference_rows_show_the_prompt_once_and_both_answers(capsys):
    out, err = _preview(capsys, "--dataset", "preference-demo", "--n", "1")
    assert err.strip() == ("[wb] preview: dpo data (the named dataset preference-demo is preference data); choose "
                           "another with --task")
    assert out.startswith("── preference-demo:1 · template qwen3 · dpo · chosen 28 tokens, 12 trained · rejected 29 "
                          "tokens, 13 trained with the prompt (⟦ ⟧)\n[prompt: 15 tokens, in both]\n"
                          "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n\n"
                          "[chosen]\n⟦<think>\n\n</think>\n\nThe capital of France is Paris.<|im_end|>⟧\n\n"
                          "[rejected]\n⟦<think>\n\n</think>\n\nI am not sure, maybe Lyon.<|im_end|>⟧\n")
    assert out.count("What is the capital of France?") == 1


def test_preference_json_is_what_dpo_trains(capsys, qwen3):
    from swiftlike.data.dataset import load_rows
    from swiftlike.data.pairs import encode_pairs

    shown = _json(capsys, "--dataset", "preference-demo", "--n", "3")
    pairs, _ = encode_pairs(load_rows(["preference-demo"], task="preference")[:3], qwen3, 4096)
    assert [set(s) for s in shown] == [{"source", "task", "prompt_ids", "chosen", "rejected"}] * 3
    for s, pair in zip(shown, pairs):
        assert s["task"] == "dpo"
        for side in ("chosen", "rejected"):
            assert s[side] == {"input_ids": pair[side]["input_ids"], "labels": pair[side]["labels"]}
            assert s[side]["input_ids"][:len(s["prompt_ids"])] == s["prompt_ids"]
            assert set(s[side]["labels"][:len(s["prompt_ids"])]) == {-100}


def test_reward_model_rows_mark_the_scored_token(capsys, tmp_path):
    p = tmp_path / "rm.jsonl"
    p.write_text(json.dumps({"prompt": "q", "chosen": "good", "rejected": "bad", "margin": 2.0}) + "\n")
    out, _ = _preview(capsys, "--dataset", str(p), "--task", "rm")
    head, body = out.split("\n", 1)
    assert head.startswith(f"── {p}:1 · template qwen3 · rm · chosen ") and "margin 2.0" in head
    assert "the reward head reads the last token of each, ⟦ ⟧" in head
    assert body.count("⟦") == 2 and "good<|im_end|>⟦\n⟧" in body   # the last token of each side, nothing else
    (row,) = _json(capsys, "--dataset", str(p), "--task", "rm")
    assert row["task"] == "rm" and row["margin"] == 2.0


def test_kto_rows_show_their_label(capsys, qwen3):
    from swiftlike.data.dataset import load_rows
    from swiftlike.data.pairs import encode_kto

    out, _ = _preview(capsys, "--dataset", "kto-demo", "--n", "2")
    assert "· kto · label true (desirable) · 28 tokens, 12 trained (⟦ ⟧)\n" in out
    assert "· kto · label false (undesirable) · 29 tokens, 13 trained (⟦ ⟧)\n" in out
    shown = _json(capsys, "--dataset", "kto-demo", "--n", "2")
    examples, _ = encode_kto(load_rows(["kto-demo"], task="kto")[:2], qwen3, 4096)
    for s, e in zip(shown, examples):
        assert s == {"source": s["source"], "task": "kto", "label": e["label"], "input_ids": e["enc"]["input_ids"],
                     "labels": e["enc"]["labels"]}


def test_grpo_rows_show_the_generation_prompt_and_reward_columns(capsys, qwen3):
    from swiftlike.data.dataset import DataStats, load_rows
    from swiftlike.pipelines.grpo import encode_prompts

    out, _ = _preview(capsys, "--dataset", "arithmetic", "--n", "1")
    assert out == ("── arithmetic:1 · template qwen3 · grpo · prompt 25 tokens, up to the generation prompt "
                   "(completions are sampled after it)\n<|im_start|>user\nWhat is 43 - 21? Put the final answer "
                   "after ####.<|im_end|>\n<|im_start|>assistant\n\n"
                   "[reward functions also receive: solution=\"22\"]\n\n")
    (shown,) = _json(capsys, "--dataset", "arithmetic", "--n", "1", "--enable_thinking", "false")
    row = load_rows(["arithmetic"], task="grpo")[0]
    expected = encode_prompts([row], qwen3, 512, DataStats(), enable_thinking=False)[0]["prompt_ids"]
    assert shown == {"source": "arithmetic:1", "task": "grpo", "prompt_ids": expected, "columns": {"solution": "22"}}


def test_pretraining_rows_train_every_token(capsys, qwen3_tokenizer):
    out, err = _preview(capsys, "--dataset", "tests/data/c4_sample.jsonl", "--n", "1")
    assert "pt data (a text column only)" in err
    assert out.startswith("── tests/data/c4_sample.jsonl:1 · template text · pt · ")
    (row,) = _json(capsys, "--dataset", "tests/data/c4_sample.jsonl", "--n", "1")
    assert row["labels"] == row["input_ids"] and row["input_ids"][-1] == qwen3_tokenizer.eos_token_id


def test_sft_json_names_its_task(capsys):
    rows = _json(capsys, "--dataset", "tests/data/alpaca_en_sample.json", "--n", "1")
    assert set(rows[0]) == {"source", "task", "input_ids", "labels"} and rows[0]["task"] == "sft"


def test_rows_that_do_not_fit_the_task_name_their_row(capsys):
    code = main(["data", "preview", *QWEN, "--dataset", "tests/data/alpaca_en_sample.json", "--task", "dpo"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("wb: error: tests/data/alpaca_en_sample.json row 0: no 'rejected'")
    assert len(err.splitlines()) == 1

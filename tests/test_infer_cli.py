"""`wb infer` as a user types it: one query, chat (streamed, /clear, /system), batch inference over a dataset
(any format, references and extra columns kept, resumable, nothing lost on Ctrl-C), and one-line errors."""
import json
from types import SimpleNamespace

import pytest

from swiftlike.cli.main import main

MODEL = ["--model", "Qwen/Qwen3-0.6B", "--miniature"]
ROWS = [
    {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}], "id": 7},
    {"prompt": "Name a colour.", "solution": "red"},
    {"instruction": "Translate", "input": "hola", "output": "hello"},
    {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello"}]},
    {"question": "1+1?", "answer": "2"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


def test_batch_inference_over_any_format_equals_queries(tmp_path, capsys):
    data, out = _write(tmp_path / "d.jsonl", ROWS), tmp_path / "res" / "out.jsonl"
    assert main(["infer", *MODEL, "--dataset", data, "--output", str(out), "--max_new_tokens", "6",
                 "--max_batch_size", "4"]) == 0
    err = capsys.readouterr().err
    assert "6 rows answered" in err and "tokens/s" in err and "row/s" in err  # the progress bar and summary
    lines = {line["row"]: line for line in _lines(out)}
    assert sorted(lines) == [f"{data}:{i}" for i in range(1, 7)]
    first = lines[f"{data}:1"]
    assert first["messages"] == [{"role": "user", "content": "What is 2+2?"}] and first["reference"] == "4"
    assert first["id"] == 7 and first["finish_reason"] in ("stop", "length")
    assert first["usage"]["completion_tokens"] <= 6 and first["usage"]["prompt_tokens"] > 5
    assert lines[f"{data}:2"]["solution"] == "red" and "reference" not in lines[f"{data}:2"]
    assert lines[f"{data}:3"]["messages"][-1]["content"] == "Translate\nhola"
    assert lines[f"{data}:3"]["reference"] == "hello"
    assert lines[f"{data}:5"]["reference"] == "2"
    assert [m["role"] for m in lines[f"{data}:6"]["messages"]] == ["system", "user"]
    # greedy batch answers equal the one-query answers
    assert main(["infer", *MODEL, "--query", "What is 2+2?", "--max_new_tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == first["response"].strip()


def test_batch_is_resumable_and_keeps_what_ctrl_c_interrupted(tmp_path, capsys, monkeypatch):
    import swiftlike.pipelines.infer as infer

    data = _write(tmp_path / "d.jsonl", ROWS)
    whole, parts = tmp_path / "whole.jsonl", tmp_path / "parts.jsonl"
    argv = ["infer", *MODEL, "--dataset", data, "--max_new_tokens", "5", "--temperature", "0.8",
            "--max_batch_size", "2"]
    assert main([*argv, "--output", str(whole)]) == 0
    original, calls = infer._answer_fields, []

    def interrupted(template, prompt_ids, completion):  # Ctrl-C while the third row is written
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(template, prompt_ids, completion)

    monkeypatch.setattr(infer, "_answer_fields", interrupted)
    assert main([*argv, "--output", str(parts)]) == 130
    assert "2 rows written" in capsys.readouterr().err and len(_lines(parts)) == 2
    monkeypatch.setattr(infer, "_answer_fields", original)
    with parts.open("a") as f:
        f.write('{"row": "cut sho')  # a crash in the middle of a line
    assert main([*argv, "--output", str(parts)]) == 0
    assert "2 of 6 rows already answered" in capsys.readouterr().err
    by_row = {line["row"]: line for line in _lines(parts)}
    assert len(_lines(parts)) == 6 and by_row == {line["row"]: line for line in _lines(whole)}  # seeded per row
    assert main([*argv, "--output", str(parts)]) == 0
    assert "6 of 6 rows already answered" in capsys.readouterr().err and len(_lines(parts)) == 6


def test_resume_is_safe_for_any_file_and_any_text(tmp_path, capsys, monkeypatch):
    """Each once went wrong: a file that is not an output, without a final line break, lost its last line before
    it was refused; a row holding U+2028 made its output unresumable (lines were split there); ./d.jsonl and
    d.jsonl gave different row keys (every row answered twice)."""
    data = _write(tmp_path / "d.jsonl", ROWS[:2])
    mine = tmp_path / "mine.jsonl"
    mine.write_bytes((tmp_path / "d.jsonl").read_bytes().rstrip(b"\n"))
    before = mine.read_bytes()
    assert "not an output of `wb infer --dataset`" in _error(capsys, ["infer", *MODEL, "--dataset", data,
                                                                      "--output", str(mine)])
    assert mine.read_bytes() == before
    odd = _write(tmp_path / "odd.jsonl", [{"query": "line one\u2028line two", "response": "x"}, ROWS[1]])
    monkeypatch.chdir(tmp_path)
    argv = ["infer", *MODEL, "--max_new_tokens", "3", "--output", "out.jsonl"]
    assert main([*argv, "--dataset", "odd.jsonl"]) == 0
    assert main([*argv, "--dataset", "./odd.jsonl"]) == 0
    assert "2 of 2 rows already answered" in capsys.readouterr().err
    assert len((tmp_path / "out.jsonl").read_bytes().split(b"\n")) == 3 and odd
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # from another directory the same file has other keys: refused, not redone
    said = _error(capsys, ["infer", *MODEL, "--max_new_tokens", "3", "--output", "../out.jsonl", "--dataset",
                           "../odd.jsonl"])
    assert 'answers other rows ("odd.jsonl:1", ...), none of this run\'s ("../odd.jsonl:1", ...)' in said
    assert len((tmp_path / "out.jsonl").read_bytes().split(b"\n")) == 3


def test_a_folder_s_rows_read_their_images_beside_their_own_file(tmp_path, monkeypatch):
    from swiftlike.infer.prompts import read_prompts

    (tmp_path / "vl" / "data").mkdir(parents=True)
    row = {"messages": [{"role": "user", "content": "<image>Colour?"}], "images": ["cat.png"]}
    (tmp_path / "vl" / "data" / "rows.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.chdir(tmp_path)
    for spec in ("vl/data", "vl/data/rows.jsonl"):  # (the folder's base was the working directory)
        base = read_prompts([spec])[0].base
        assert base is not None and base.resolve() == (tmp_path / "vl" / "data").resolve()


def test_chat_goes_on_after_a_message_over_the_context(monkeypatch, capsys):
    typed = iter(["word " * 50_000, "Hi", "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    assert main(["infer", *MODEL, "--max_new_tokens", "3"]) == 0  # (it ended the chat: exit 2)
    out = capsys.readouterr().out
    assert "[wb] the prompt has" in out and out.count("assistant> ") == 1


def test_query_several_answers_and_dataset_responses(tmp_path, capsys):
    assert main(["infer", *MODEL, "--query", "Hi", "--max_new_tokens", "4", "--num_return_sequences", "2",
                 "--temperature", "1", "--top_k", "20", "--top_p", "0.9", "--repetition_penalty", "1.1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[1/2] ") and "\n[2/2] " in out
    data, res = _write(tmp_path / "d.jsonl", ROWS[:2]), tmp_path / "o.jsonl"
    assert main(["infer", *MODEL, "--dataset", data, "--output", str(res), "--max_new_tokens", "4",
                 "--num_return_sequences", "3", "--temperature", "1"]) == 0
    for line in _lines(res):
        assert len(line["responses"]) == 3 and all("finish_reason" in r for r in line["responses"])


def test_stop_strings_from_the_command_line(tmp_path, capsys):
    assert main(["infer", *MODEL, "--query", "Hello", "--max_new_tokens", "12"]) == 0
    free = capsys.readouterr().out.rstrip("\n")
    stop = free.strip()[3:6]
    assert main(["infer", *MODEL, "--query", "Hello", "--max_new_tokens", "12", "--stop", stop, "ZZZ"]) == 0
    cut = capsys.readouterr().out.rstrip("\n")
    assert stop not in cut and free.startswith(cut)


def test_chat_streams_and_keeps_history(monkeypatch, capsys):
    from swiftlike.infer.request import Request

    typed = iter(["Hello", "/system You are terse.", "And again?", "/clear", "Fresh start", "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    prompts = []
    original = Request.__init__

    def spy(self, prompt_ids, *a, **k):
        prompts.append(prompt_ids)
        original(self, prompt_ids, *a, **k)

    monkeypatch.setattr(Request, "__init__", spy)
    assert main(["infer", *MODEL, "--max_new_tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 3 and "system prompt set" in out and "conversation cleared" in out
    first, second, third = prompts
    assert len(second) > len(first) + 5   # the history and the system prompt came along
    assert len(third) < len(second)       # cleared (the system prompt stays)


def test_tool_calls_are_parsed_into_openai_style():
    from swiftlike.infer.prompts import PromptRow
    from swiftlike.models import load_tokenizer
    from swiftlike.pipelines.infer import result_line
    from swiftlike.templates import get_template

    template = get_template("qwen3", load_tokenizer("Qwen/Qwen3-0.6B", miniature=True))
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    completion = SimpleNamespace(text=text, token_ids=[1, 2, 3], finish_reason="stop")
    messages = [{"role": "user", "content": "Weather?"}]
    line = result_line(template, PromptRow("d.jsonl:1", messages), [completion], template.encode_prompt(messages))
    assert line["tool_calls"] == [{"type": "function",
                                   "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert line["response"] == "" and line["finish_reason"] == "stop"


@pytest.mark.parametrize("text, finish, reasoning, response", [
    ("The user asks about Paris, so", "length", "The user asks about Paris, so", ""),  # cut by the budget thinking
    ("Paris is sunny.\n</think>\n\nSunny.", "length", "Paris is sunny.", "Sunny."),
    ("Sunny.", "stop", None, "Sunny."),                 # finished without a think block: an answer, as trained
])
def test_a_thinking_prompts_answer_is_reasoning_until_the_block_closes(text, finish, reasoning, response):
    """A template whose prompt opens <think> (Qwen3-Thinking-2507): the answer is reasoning until </think>, also
    when the budget ends first (it used to come back as the response)."""
    from swiftlike.infer.prompts import PromptRow
    from swiftlike.models import load_tokenizer
    from swiftlike.pipelines.infer import result_line
    from swiftlike.templates import get_template

    template = get_template("qwen3_thinking_2507", load_tokenizer("Qwen/Qwen3-0.6B", miniature=True))
    messages = [{"role": "user", "content": "Weather?"}]
    completion = SimpleNamespace(text=text, token_ids=[1, 2], finish_reason=finish)
    line = result_line(template, PromptRow("d.jsonl:1", messages), [completion], template.encode_prompt(messages))
    assert (line.get("reasoning"), line["response"]) == (reasoning, response)


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1", "--query", "q"], "temperature must be >= 0"),
    (["--top_p", "0", "--query", "q"], r"top_p must be in (0, 1]"),
    (["--top_p", "1.5", "--query", "q"], r"top_p must be in (0, 1]"),
    (["--num_return_sequences", "0", "--query", "q"], "must be at least 1"),
    (["--max_new_tokens", "0", "--query", "q"], "max_new_tokens must be at least 1"),
    (["--dataset", "x.jsonl"], "--dataset needs --output"),
    (["--output", "x.jsonl"], "--output is for batch inference"),
    (["--max_batch_size", "0"], "--max_batch_size must be at least 1"),
    (["--infer_backend", "vllm", "--query", "q"], "pip install vllm"),
    (["--query", "q", "--response", "a"], "--response is scored by reward models"),  # (was ignored)
])
def test_bad_values_are_one_line_errors(capsys, monkeypatch, flags, message):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)
    assert message in _error(capsys, ["infer", *MODEL, *flags])


def test_row_without_prompt_names_file_and_row(tmp_path, capsys):
    data = _write(tmp_path / "d.jsonl", [ROWS[0], {"messages": [{"role": "assistant", "content": "orphan"}]}])
    err = _error(capsys, ["infer", *MODEL, "--dataset", data, "--output", str(tmp_path / "o.jsonl")])
    assert err.startswith(f"wb: error: {data}:2: no prompt")
    data = _write(tmp_path / "e.jsonl", [{"ask": "a"}])
    err = _error(capsys, ["infer", *MODEL, "--dataset", data, "--output", str(tmp_path / "o.jsonl")])
    assert err.startswith(f"wb: error: {data}:1: no prompt (unknown format (fields: ask)")
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_lora_checkpoint_batch_inference(tmp_path, capsys):
    """From a checkpoint directory alone: a LoRA run of 2 steps, then --adapters with --dataset and --query."""
    out = tmp_path / "run"
    assert main(["sft", *MODEL, "--dataset", "examples/data/identity.jsonl", "--max_steps", "2",
                 "--output_dir", str(out)]) == 0
    ckpt = str(out / "checkpoint-2")
    data, res = _write(tmp_path / "d.jsonl", ROWS[:3]), tmp_path / "o.jsonl"
    assert main(["infer", "--adapters", ckpt, "--dataset", data, "--output", str(res), "--max_new_tokens", "6"]) == 0
    first = {line["row"]: line for line in _lines(res)}[f"{data}:1"]
    capsys.readouterr()
    assert main(["infer", "--adapters", ckpt, "--query", "What is 2+2?", "--max_new_tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == first["response"].strip()


def test_named_datasets_are_read_by_name(tmp_path, capsys):
    """`wb datasets` names work as for training: the shipped arithmetic prompts, with their solution column."""
    out = tmp_path / "o.jsonl"
    assert main(["infer", *MODEL, "--dataset", "arithmetic#3", "--output", str(out), "--max_new_tokens", "2"]) == 0
    lines = _lines(out)
    assert len(lines) == 3 and all("solution" in line and line["row"].startswith("arithmetic:") for line in lines)


def test_a_prompt_longer_than_the_context_stops_before_any_answer(tmp_path, capsys):
    long = {"messages": [{"role": "user", "content": "word " * 50_000}]}
    data = _write(tmp_path / "d.jsonl", [ROWS[0], long])
    out = tmp_path / "o.jsonl"
    err = _error(capsys, ["infer", *MODEL, "--dataset", data, "--output", str(out)])
    assert err.startswith(f"wb: error: {data}:2: the prompt has ") and "the model's context is 40960" in err
    assert not out.exists()  # not half a run that every resume would stop in again

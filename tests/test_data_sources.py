"""Data sources, selection, bad-row handling and truncation."""
import json

import pytest

from swiftlike.data.dataset import DataStats, encode_rows, load_rows
from swiftlike.errors import UserError
from swiftlike.templates import get_template

ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_csv_parquet_and_folders(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.csv").write_text('instruction,input,output\nSay hi,,hi\n"Add","1, 2",3\n')
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"query": "q", "response": "r"}]), tmp_path / "d" / "b.parquet")
    sources = []
    rows = load_rows([str(tmp_path / "d")], sources)
    assert [r["messages"][0]["content"] for r in rows] == ["Say hi", "Add\n1, 2", "q"]
    assert sources == [f"{tmp_path / 'd' / 'a.csv'}:2", f"{tmp_path / 'd' / 'a.csv'}:3",
                       f"{tmp_path / 'd' / 'b.parquet'} row 0"]


def test_csv_with_messages_column_and_missing_cells(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text('messages\n"[{""role"": ""user"", ""content"": ""a""}, {""role"": ""assistant"", ""content"": ""b""}]"\n')
    assert load_rows([str(p)])[0]["messages"][1] == {"role": "assistant", "content": "b"}
    bad = tmp_path / "bad.csv"
    bad.write_text("instruction,input,output\nonly one cell\n")
    with pytest.raises(UserError, match=r"bad.csv:2: missing columns input, output"):
        load_rows([str(bad)])


def test_files_read_as_their_writers_meant(tmp_path):
    """Each once read wrongly: a quoted CSV cell's line break (dropped), a form feed in a cell (a false 'missing
    columns'), U+2028 inside a JSON string (a false 'not valid JSON'), a byte-order mark (Excel's "CSV UTF-8": a
    column named '\ufeffquery'), and a text answer that looks like JSON ([1, 2] became a list of ints)."""
    csv_path = tmp_path / "poem.csv"
    csv_path.write_bytes('\ufeffquery,response\r\nwrite a poem,"roses are red\r\nviolets are blue"\r\n'
                         'page,page1\x0cpage2\r\nlist it,"[1, 2]"\r\n'.encode("utf-8"))
    answers = [r["messages"][1]["content"] for r in load_rows([str(csv_path)])]
    assert answers == ["roses are red\nviolets are blue", "page1\x0cpage2", "[1, 2]"]  # (text mode: CRLF is LF)
    jsonl = tmp_path / "sep.jsonl"
    rows = [{"query": "q", "response": "line one\u2028line two"}, {"query": "q2", "response": "a2"}]
    jsonl.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    sources = []
    read = load_rows([str(jsonl)], sources)
    assert [r["messages"][1]["content"] for r in read] == ["line one\u2028line two", "a2"]
    assert sources == [f"{jsonl}:1", f"{jsonl}:2"]


def test_a_folder_s_hidden_folders_are_not_data(tmp_path):
    """Jupyter's .ipynb_checkpoints copies (and any hidden folder) were read as more rows: duplicates."""
    (tmp_path / "d" / ".ipynb_checkpoints").mkdir(parents=True)
    row = json.dumps({"query": "q", "response": "r"}) + "\n"
    (tmp_path / "d" / "a.jsonl").write_text(row)
    (tmp_path / "d" / ".ipynb_checkpoints" / "a-checkpoint.jsonl").write_text(row)
    assert len(load_rows([str(tmp_path / "d")])) == 1


def test_image_paths_are_relative_to_their_own_file_in_a_folder(tmp_path, monkeypatch):
    """A folder given as --dataset: each file's relative image paths start at that file's folder, as for the file
    given alone (they were read from the working directory)."""
    (tmp_path / "data" / "sub").mkdir(parents=True)
    row = {"messages": [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "Red."}],
           "images": ["red.png"]}
    (tmp_path / "data" / "sub" / "rows.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "data" / "sub" / "red.png").write_bytes(b"png")
    monkeypatch.chdir(tmp_path)
    expected = str(tmp_path / "data" / "sub" / "red.png")
    assert load_rows([str(tmp_path / "data")])[0]["images"] == [expected]
    assert load_rows([str(tmp_path / "data" / "sub" / "rows.jsonl")])[0]["images"] == [expected]


def test_non_utf8_names_the_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(json.dumps(ROW).encode() + b"\n" + b'{"messages": "\xff"}\n')
    with pytest.raises(UserError, match=r"x.jsonl:2: not UTF-8 text"):
        load_rows([str(p)])


def test_selection_samples_and_oversamples_with_a_seed(tmp_path):
    rows = [{"messages": [{"role": "user", "content": str(i)}, {"role": "assistant", "content": "x"}]}
            for i in range(10)]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    a = load_rows([f"{path}#4"], seed=1)
    assert len(a) == 4 and len({r["messages"][0]["content"] for r in a}) == 4
    assert a == load_rows([f"{path}#4"], seed=1) != load_rows([f"{path}#4"], seed=2)
    more = load_rows([f"{path}#25"])
    assert len(more) == 25 and {r["messages"][0]["content"] for r in more} == {str(i) for i in range(10)}
    mixed = load_rows([f"{path}#3", path])
    assert len(mixed) == 13
    with pytest.raises(UserError, match="must be followed by a positive row count"):
        load_rows([f"{path}#zero"])


def test_skip_bad_rows_counts_every_skip(tmp_path, qwen3_tokenizer):
    path = _jsonl(tmp_path / "d.jsonl", [ROW, {"question": "?"}, {"messages": [{"role": "user", "content": "x"}]}, ROW])
    with pytest.raises(UserError, match="d.jsonl:2: unknown format"):
        load_rows([path])
    stats = DataStats()
    rows = load_rows([path], skip_bad_rows=True, stats=stats)
    encoded, stats = encode_rows(rows, get_template("qwen3", qwen3_tokenizer), 512, stats=stats)
    assert len(encoded) == 2
    assert stats.rows_read == 4
    assert stats.dropped == {"bad row: unknown format": 1, "bad row: no assistant turn to train on": 1}
    assert stats.report().startswith("rows read 4, kept 2, dropped 1 (bad row: unknown format)")
    # '#N' reads the whole file: the report says how many rows it took (the count once mixed the sample's size
    # with the whole file's drops: "rows read 3")
    stats = DataStats()
    rows = load_rows([f"{path}#1"], skip_bad_rows=True, stats=stats)
    encoded, stats = encode_rows(rows, get_template("qwen3", qwen3_tokenizer), 512, stats=stats)
    assert stats.report().startswith(f"rows read 4 ({path}#1: 1 of 2 usable rows), kept 1, dropped 1 (bad row")
    stats = DataStats()
    load_rows([f"{path}#3"], skip_bad_rows=True, stats=stats)
    assert stats.rows_read == 4 and stats.selected == [f"{path}#3: 3 of 2 usable rows, some twice"]


def test_template_rejections_are_counted_when_skipping(qwen3_tokenizer):
    system = {"messages": [{"role": "system", "content": "s"}] + ROW["messages"]}
    template = get_template("gemma2", qwen3_tokenizer)
    with pytest.raises(UserError, match="row 1: System role not supported"):
        encode_rows([ROW, system], template, 512)
    encoded, stats = encode_rows([ROW, system], template, 512, skip_bad_rows=True)
    assert len(encoded) == 1 and stats.dropped == {"rejected by the template: System role not supported": 1}


@pytest.mark.parametrize("strategy", ["left", "right"])
def test_truncation_keeps_one_side(qwen3_tokenizer, strategy):
    template = get_template("qwen3", qwen3_tokenizer)
    long = {"messages": [{"role": "user", "content": "hi " * 20}, {"role": "assistant", "content": "yo " * 40}]}
    full = template.encode(long)
    encoded, stats = encode_rows([long], template, 32, truncation_strategy=strategy)
    expected = full["input_ids"][-32:] if strategy == "left" else full["input_ids"][:32]
    assert encoded[0]["input_ids"] == expected and stats.truncated == 1


def test_unreachable_hub_dataset_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match=r"^cannot load dataset hf::nobody/no-such-dataset: "):
        load_rows(["hf::nobody/no-such-dataset"])


def test_named_datasets_columns_and_placeholders(tmp_path, capsys):
    names = {"name": "Wren", "author": "the swiftlike team"}
    sources = []
    rows = load_rows(["identity#3"], sources, names=names)
    assert all("{{" not in json.dumps(r, ensure_ascii=False) for r in rows)
    assert any("Wren" in json.dumps(r) or "the swiftlike team" in json.dumps(r) for r in rows)
    assert all(s.startswith("identity:") for s in sources)
    with pytest.raises(UserError, match="give --model_name and --model_author"):
        load_rows(["identity"])
    with pytest.raises(UserError, match="'arithmetic' is for grpo training, not sft"):
        load_rows(["arithmetic"])
    assert load_rows(["arithmetic#2"], task="grpo")[0]["solution"]
    assert len(load_rows(["preference-demo"], task="preference")) == 12
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    assert load_rows([str(p)], columns={"question": "query", "answer": "response"})[0]["messages"] == [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    swapped = load_rows([str(p)], columns={"question": "answer", "answer": "question"}, task="grpo")[0]
    assert swapped["messages"] == [{"role": "user", "content": "a"}]
    p.write_text(json.dumps({"question": "q", "answer": "a", "response": "kept?"}) + "\n")
    with pytest.raises(UserError, match=r"qa.jsonl:1: columns 'answer' and 'response' would both be 'response'"):
        load_rows([str(p)], columns={"question": "query", "answer": "response"})  # once: one lost silently
    from swiftlike.infer.prompts import read_prompts  # wb infer / eval read prompts the same way

    with pytest.raises(UserError, match=r"qa.jsonl:1: columns 'answer' and 'response' would both be 'response'"):
        read_prompts([str(p)], {"question": "query", "answer": "response"})


def test_wb_datasets_and_columns_flag(tmp_path, capsys):
    from swiftlike.cli.main import main

    assert main(["datasets", "--task", "grpo"]) == 0
    out = capsys.readouterr().out
    assert "arithmetic" in out and "gsm8k-grpo" in out and "identity" not in out
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    assert main(["data", "preview", "--model", "Qwen/Qwen3-0.6B", "--dataset", str(p), "--columns",
                 '{"question": "query", "answer": "response"}']) == 0
    assert "⟦<think>\n\n</think>\n\na<|im_end|>⟧" in capsys.readouterr().out
    assert main(["data", "preview", "--model", "Qwen/Qwen3-0.6B", "--dataset", str(p), "--columns", "{oops"]) == 2
    assert capsys.readouterr().err.strip() == "wb: error: columns: not valid JSON: '{oops'"


def test_empty_file_and_empty_text(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match=r"empty.jsonl: no usable rows"):
        load_rows([str(empty)])
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"text": "   "}) + "\n")
    with pytest.raises(UserError, match=r"blank.jsonl:1: 'text' is empty"):
        load_rows([str(blank)], task="pt")


def test_files_are_read_as_rows_are_taken_not_whole(tmp_path):
    """A .jsonl, .csv or .parquet source is read as its rows are taken (memory does not grow with the file): its
    first row comes before a bad byte further down is met, which then names its line."""
    from swiftlike.data.files import read_rows

    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"text": "one"}\n{"text": "two \xe2\x80\xa8 lines"}\n\n{"text": "\xff"}\n')
    rows = read_rows(str(jsonl))
    assert next(rows) == (f"{jsonl}:1", {"text": "one"})  # (the byte-order mark is not data)
    assert next(rows)[1] == {"text": "two \u2028 lines"}
    with pytest.raises(UserError, match=r"d.jsonl:4: not UTF-8 text \(byte 56\)"):
        next(rows)
    csv_file = tmp_path / "d.csv"
    csv_file.write_bytes(b"text\none\n" + b"x\n" * 20000 + b"\xff\n")
    rows = read_rows(str(csv_file))
    assert next(rows) == (f"{csv_file}:2", {"text": "one"})
    with pytest.raises(UserError, match=r"d.csv:20003: not UTF-8 text"):
        list(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"t{i}" for i in range(3000)]}), tmp_path / "d.parquet", row_group_size=1000)
    rows = list(read_rows(str(tmp_path / "d.parquet")))
    assert len(rows) == 3000 and rows[2999] == (f"{tmp_path / 'd.parquet'} row 2999", {"text": "t2999"})

"""--streaming and --lazy_tokenize: rows on demand, same training as eager encoding, resumable."""
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

import swiftlike as wb
from swiftlike.cli.main import main
from swiftlike.data.stream import RowStream

DATA = "examples/data/identity.jsonl"
BASE = dict(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[DATA], lora=True, lora_dropout=0.0,
            learning_rate=1e-2, logging_steps=1, torch_dtype="float32")  # fp32 on GPUs too: equivalence checks


def test_row_stream_is_seeded_replayable_and_covers_each_pass():
    stream = RowStream(lambda: iter(range(10)), seed=3, buffer_size=4)
    first = stream.take(0, 10)
    assert sorted(first) == list(range(10))
    second = stream.take(10, 10)
    assert sorted(second) == list(range(10)) and second != first  # a new order each pass
    assert RowStream(lambda: iter(range(10)), seed=3, buffer_size=4).take(5, 10) == (first + second)[5:15]


def test_streaming_needs_max_steps(capsys):
    assert main(["sft", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", DATA, "--streaming"]) == 2
    assert "--streaming needs --max_steps" in capsys.readouterr().err


@pytest.mark.slow
def test_lazy_tokenize_trains_exactly_like_eager(tmp_path):
    eager = wb.sft(**BASE, max_steps=3, output_dir=str(tmp_path / "eager"))
    lazy = wb.sft(**BASE, max_steps=3, lazy_tokenize=True, output_dir=str(tmp_path / "lazy"))
    assert [h["loss"] for h in lazy.log_history] == [h["loss"] for h in eager.log_history]
    # with rows held out for validation (--split_ratio): the same rows, encoded (lazily they once were not: a
    # KeyError at the first evaluation, and the run directory deleted)
    split = dict(BASE, max_steps=3, split_ratio=0.1)
    eager = wb.sft(**split, output_dir=str(tmp_path / "eager_split"))
    lazy = wb.sft(**split, lazy_tokenize=True, output_dir=str(tmp_path / "lazy_split"))
    assert lazy.metrics["eval_loss"] == eager.metrics["eval_loss"]
    assert [h["loss"] for h in lazy.log_history if "loss" in h] == [h["loss"] for h in eager.log_history if "loss" in h]


@pytest.mark.slow
def test_streaming_resume_reads_the_same_rows(tmp_path):
    out = tmp_path / "run"
    common = dict(BASE, max_steps=6, save_steps=3, streaming=True, output_dir=str(out))
    wb.sft(**common)
    full = load_file(str(out / "checkpoint-6" / "adapter_model.safetensors"))
    history = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    shutil.rmtree(out / "checkpoint-6")
    resumed = wb.sft(**common, resume=True)
    again = load_file(str(Path(resumed.checkpoint) / "adapter_model.safetensors"))
    assert all((full[k] == again[k]).all() for k in full)
    assert [h["loss"] for h in resumed.log_history] == [h["loss"] for h in history]


@pytest.mark.slow
def test_a_step_whose_rows_were_all_dropped_changes_nothing(tmp_path, monkeypatch):
    """--streaming encodes as it goes: a step whose rows are all over --max_length has nothing to train. It was
    logged as loss 0.0 and still stepped AdamW (momentum and decay moved the weights); now it updates nothing and
    logs no loss."""
    from swiftlike.train import engines

    updates = []
    original = engines.DDPEngine.step
    monkeypatch.setattr(engines.DDPEngine, "step", lambda self: updates.append(1) or original(self))
    run = dict(BASE, max_steps=10, max_length=40, per_device_train_batch_size=1, streaming=True, save_steps=5,
               output_dir=str(tmp_path / "run"))
    result = wb.sft(**run)
    logged = [h for h in result.log_history if "learning_rate" in h]
    trained = [h for h in logged if "loss" in h]
    assert len(logged) == 10 and 0 < len(trained) < 10 and len(updates) == len(trained)
    dropped = result.metrics["dropped_while_training"]
    assert dropped["longer than max_length 40"] > 0
    assert result.metrics["final_loss"] == pytest.approx(trained[-1]["loss"], rel=1e-5)
    # resumed at step 5: the drops of steps 1-5 are still counted (the resumed run once counted from 0)
    shutil.rmtree(tmp_path / "run" / "checkpoint-10")
    resumed = wb.sft(**run, resume=True).metrics
    assert resumed["dropped_while_training"] == dropped
    # (steps 6-10 dropped every row here: the summary's loss was None, and printing it a TypeError)
    assert resumed["final_loss"] == pytest.approx(result.metrics["final_loss"], rel=1e-5)


@pytest.mark.parametrize("mode", ["lazy_tokenize", "streaming"])
def test_a_row_refused_while_training_is_named_by_file_and_line(tmp_path, capsys, mode):
    """Encoding as training goes: a row the template refuses is named as eager encoding names it (it was 'a
    streamed row', also under --lazy_tokenize)."""
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(3)]
    rows.insert(1, {"messages": [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "A."}],
                    "images": ["red.png"]})
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["sft", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", str(data), "--lora",
                 "--max_steps", "2", "--per_device_train_batch_size", "4", f"--{mode}", "--output_dir",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith(f"wb: error: {data}:2: template qwen3 is text-only"), err

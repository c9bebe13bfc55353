"""The benchmarks' ms-swift side (benchmarks/common.py): an interpreter without ms-swift is refused in one line, and
the wrapper around ms-swift's pipeline counts what its transformers Trainer trains — the non-padding tokens, the
time in train(), each step's end — and leaves the Trainer as it found it."""
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import common

    return common


def _interpreter(path: Path, pythonpath: str = "", flags: str = "") -> str:
    """A stand-in for another environment's Python: this one, with `pythonpath` first or site-packages off."""
    path.write_text(f'#!/bin/sh\nPYTHONPATH="{pythonpath}" exec "{sys.executable}" {flags} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_an_interpreter_without_ms_swift_is_refused_in_one_line(common, tmp_path):
    python = _interpreter(tmp_path / "python", flags="-S")  # no site-packages: no ms-swift there
    with pytest.raises(SystemExit) as exit_:
        common.msswift_python(python)
    assert str(exit_.value) == (f"--msswift_python {python}: that Python cannot import ms-swift "
                                "(pip install ms-swift there)")
    with pytest.raises(SystemExit, match="cannot import ms-swift"):
        common.msswift_python(str(tmp_path / "missing"))


def test_an_interpreter_with_ms_swift_adds_its_side(common, tmp_path, capsys):
    fake = tmp_path / "site"
    (fake / "swift" / "pipelines").mkdir(parents=True)
    (fake / "swift" / "__init__.py").write_text("__version__ = '9.9'\n")
    (fake / "swift" / "pipelines" / "__init__.py").write_text("")
    python = _interpreter(tmp_path / "python", os.pathsep.join([str(fake), *sys.path[1:]]))
    assert common.with_msswift(["ours", "trl"], python) == (["ours", "trl", "msswift"], python)
    assert "ms-swift 9.9 (transformers " in capsys.readouterr().out


def test_msswift_train_counts_what_the_trainer_trains(common, tmp_path, monkeypatch):
    import transformers

    site = tmp_path / "site"
    (site / "swift").mkdir(parents=True)
    (site / "swift" / "__init__.py").write_text(textwrap.dedent('''
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

        ROWS = [[5, 6, 7, 8, 9, 0, 0, 0], [5, 6, 0, 0, 0, 0, 0, 0], [5, 6, 7, 8, 9, 10, 11, 12],
                [5, 6, 7, 0, 0, 0, 0, 0]]


        def sft_main(argv):
            torch.manual_seed(0)
            config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)
            rows = [{"input_ids": torch.tensor(r), "attention_mask": torch.tensor([int(t > 0) for t in r]),
                     "labels": torch.tensor([t if t > 0 else -100 for t in r])} for r in ROWS]
            args = TrainingArguments(output_dir=argv[0], max_steps=2, per_device_train_batch_size=2, use_cpu=True,
                                     report_to="none", save_strategy="no", logging_steps=1)
            Trainer(model=LlamaForCausalLM(config), args=args, train_dataset=rows).train()
    '''))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "swift", raising=False)
    init, train = transformers.Trainer.__init__, transformers.Trainer.train
    try:
        run = common.msswift_train("sft_main", [str(tmp_path / "out")])
    finally:
        sys.modules.pop("swift", None)
    assert run["tokens"] == 5 + 2 + 8 + 3  # the four rows' non-padding tokens, over the two steps
    assert len(run["ends"]) == 2 and run["ends"][0] < run["ends"][1]
    assert 0 < run["ends"][1] - run["ends"][0] < run["train_seconds"]
    assert (transformers.Trainer.__init__, transformers.Trainer.train) == (init, train)

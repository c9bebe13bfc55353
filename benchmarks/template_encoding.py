"""Template encoding throughput: swiftlike's Qwen3 template vs transformers' apply_chat_template with TRL's
training template (the `{% generation %}` assistant-mask approach TRL's SFTTrainer uses for
assistant_only_loss), on the same 2,000-row chat set with the real Qwen3 tokenizer, one process.

    python benchmarks/template_encoding.py [--rows 2000] [--repeats 3]

Both produce input_ids and a per-token "trained" mask; the script checks that they agree before timing.
Needs `pip install -e ".[bench]"`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TOKENIZER, chat_rows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    from transformers import AutoTokenizer
    import trl

    import swiftlike as wb

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    rows = chat_rows(a.rows)
    template = wb.get_template("qwen3", tok)
    # TRL's Qwen3 training template: the official one with {% generation %} markers around assistant output
    training_template = (Path(trl.__file__).parent / "chat_templates" / "qwen3_training.jinja").read_text()

    def ours():
        return template.encode_batch(rows)

    def trl_style():
        out = []
        for r in rows:
            enc = tok.apply_chat_template(r["messages"], chat_template=training_template, tokenize=True,
                                          return_dict=True, return_assistant_tokens_mask=True)
            out.append(enc)
        return out

    a_enc, b_enc = ours(), trl_style()
    same_ids = sum(x["input_ids"] == list(y["input_ids"]) for x, y in zip(a_enc, b_enc))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")

    def trl_mask(y):  # TRL's generation block also covers the newline after <|im_end|>; we do not train it
        ids = list(y["input_ids"])
        return [bool(m) and not (i > 0 and ids[i - 1] == im_end) for i, m in enumerate(y["assistant_masks"])]

    same_mask = sum([lab != -100 for lab in x["labels"]] == trl_mask(y) for x, y in zip(a_enc, b_enc))
    print(f"agreement on {len(rows)} rows: input_ids {same_ids}, trained mask {same_mask} "
          "(TRL additionally trains the newline after <|im_end|>)")

    results = {}
    for name, fn in (("swiftlike", ours), ("apply_chat_template+TRL mask", trl_style)):
        best = float("inf")
        for _ in range(a.repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        results[name] = len(rows) / best
        print(f"{name:30s} {results[name]:10.0f} conversations/s")
    print(f"ratio: {results['swiftlike'] / results['apply_chat_template+TRL mask']:.1f}x")


if __name__ == "__main__":
    main()

"""Encode preference pairs: chosen and rejected share the prompt encoding; only completions are scored."""
from __future__ import annotations

import torch

from ..errors import UserError
from .collate import collate_padding_free
from .dataset import DataStats, encode_each, encode_images


def _with_prompt_untrained(messages: list[dict], prompt_len: int) -> list[dict]:
    return [dict(m, loss=False) if i < prompt_len else m for i, m in enumerate(messages)]


def pair_rows(row: dict) -> tuple[dict, dict]:
    """The chosen and the rejected conversation of a preference row as template rows, the messages they share
    (the prompt) marked untrained."""
    a, b = row["messages"], row["rejected_messages"]
    prompt_len = 0
    while prompt_len < min(len(a), len(b)) and a[prompt_len] == b[prompt_len]:
        prompt_len += 1
    shared = {k: row[k] for k in ("tools", "images") if row.get(k)}  # images: the prompt's, on both sides
    return ({"messages": _with_prompt_untrained(a, prompt_len), **shared},
            {"messages": _with_prompt_untrained(b, prompt_len), **shared})


def encode_pairs(rows: list[dict], template, max_length: int, stats: DataStats | None = None,
                 sources: list[str] | None = None, skip_bad_rows: bool = False) -> tuple[list[dict], DataStats]:
    """{"chosen": enc, "rejected": enc} per pair. --max_length limits each sequence (chosen with the prompt,
    rejected with the prompt), not their sum: a pair with either side longer is dropped and counted, as is a pair
    whose completions have nothing to score. The report counts pairs and gives each pair's length as its longer
    side, the number --max_length is compared with. A pair's images (its prompt's) are expanded on both sides,
    before the length is compared; `sources` name the rows in errors (or `skip_bad_rows` counts them)."""
    stats = stats or DataStats()
    stats.count_read(len(rows))
    stats.unit, stats.length_of, stats.tokens = "pairs", "the longer of chosen and rejected, prompt included", 0
    pairs = []

    def encode(chunk: list[dict]) -> list[tuple[dict, dict]]:
        chosen_rows, rejected_rows = map(list, zip(*(pair_rows(row) for row in chunk)))
        return [(encode_images(template, row, c), encode_images(template, row, r)) for row, c, r in
                zip(chunk, template.encode_batch(chosen_rows), template.encode_batch(rejected_rows))]

    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        encoded_chunk, rejected = encode_each(chunk, encode, sources, start, skip_bad_rows, "pair")
        stats.dropped.update(rejected)
        for row, encoded in zip(chunk, encoded_chunk):
            if encoded is None:
                continue
            c, r = encoded
            if max(c["length"], r["length"]) > max_length:
                stats.dropped[f"chosen or rejected with the prompt longer than max_length {max_length}"] += 1
            elif not any(x != -100 for x in c["labels"][1:]) or not any(x != -100 for x in r["labels"][1:]):
                stats.dropped["nothing to score"] += 1
            else:
                pairs.append({"chosen": c, "rejected": r, "length": c["length"] + r["length"],
                              **({"margin": row["margin"]} if "margin" in row else {})})
                stats.lengths.append(max(c["length"], r["length"]))
                stats.tokens += c["length"] + r["length"]
                stats.trained_tokens += sum(1 for x in c["labels"] + r["labels"] if x != -100)
    if not pairs:
        raise UserError(f"no pairs left to train on: {stats.report().splitlines()[0]}")
    return pairs, stats


def pair_sequences(pairs: list[dict]) -> list[dict]:
    """The chosen sequences, then the rejected ones: how a batch of pairs is laid out."""
    return [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]


def collate_pairs(pairs: list[dict]) -> dict:
    """One padding-free row: the chosen sequences, then the rejected ones."""
    batch = collate_padding_free(pair_sequences(pairs))
    batch["n_pairs"] = torch.tensor(len(pairs))
    if any("margin" in p for p in pairs):
        batch["margin"] = torch.tensor([p.get("margin", 0.0) for p in pairs])
    if pairs and all("ref" in p for p in pairs):  # --precompute_ref_logps
        batch["ref_logps"] = torch.tensor([p["ref"][0] for p in pairs] + [p["ref"][1] for p in pairs])
    return batch


# -- KTO: single answers with a desirable/undesirable label ------------------------------------------
def _prompt_extras(row: dict) -> dict:
    """What a KTO row's prompt carries beside its messages: its images and tools."""
    return {k: row[k] for k in ("images", "tools") if row.get(k)}


def kto_row(row: dict) -> dict:
    """A KTO row as a template row: only its last message, the labelled answer, is trained."""
    return {"messages": _with_prompt_untrained(row["messages"], len(row["messages"]) - 1), **_prompt_extras(row)}


def encode_kto(rows: list[dict], template, max_length: int, stats: DataStats | None = None,
               sources: list[str] | None = None, skip_bad_rows: bool = False) -> tuple[list[dict], DataStats]:
    """Each row keeps its prompt and answer messages (and its prompt's images) so batches can pair prompts with
    other rows' answers. --max_length limits each example (prompt + answer, images expanded)."""
    stats = stats or DataStats()
    stats.count_read(len(rows))
    stats.length_of = "prompt + answer"
    examples = []

    def encode(chunk: list[dict]) -> list[dict]:
        return [encode_images(template, row, enc) for row, enc in
                zip(chunk, template.encode_batch([kto_row(r) for r in chunk]))]

    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        encoded_chunk, rejected = encode_each(chunk, encode, sources, start, skip_bad_rows)
        stats.dropped.update(rejected)
        for row, enc in zip(chunk, encoded_chunk):
            if enc is None:
                continue
            if enc["length"] > max_length:
                stats.dropped[f"longer than max_length {max_length}"] += 1
            elif not any(x != -100 for x in enc["labels"][1:]):
                stats.dropped["nothing to score"] += 1
            else:
                examples.append({"enc": enc, "prompt": row["messages"][:-1], "answer": row["messages"][-1],
                                 "label": row["label"], "length": enc["length"],
                                 **_prompt_extras(row)})
                stats.lengths.append(enc["length"])
                stats.trained_tokens += sum(1 for x in enc["labels"] if x != -100)
    if not examples:
        raise UserError(f"no examples left to train on: {stats.report().splitlines()[0]}")
    labels = [e["label"] for e in examples]
    if all(labels) or not any(labels):
        raise UserError("KTO needs both desirable (label true) and undesirable (label false) examples; "
                        f"all {len(labels)} are {'desirable' if labels[0] else 'undesirable'}")
    return examples, stats


class KTOCollate:
    """Matched sequences, then mismatched ones (prompt_i, with its images and tools, and answer_{i-1}) for the KL
    estimate.
    `images`: a vision-language run's ImageCollate, which adds the sequences' pixels (data/collate.py)."""

    def __init__(self, template, images=None):
        self.template, self.images = template, images

    def __call__(self, examples: list[dict]) -> dict:
        n = len(examples)
        mismatched = [{"messages": _with_prompt_untrained(examples[i]["prompt"] + [examples[i - 1]["answer"]],
                                                          len(examples[i]["prompt"])),
                       **_prompt_extras(examples[i])} for i in range(n)]
        kl = [encode_images(self.template, row, enc) for row, enc in
              zip(mismatched, self.template.encode_batch(mismatched))] if n > 1 else [examples[0]["enc"]]
        sequences = [e["enc"] for e in examples] + kl
        batch = collate_padding_free(sequences)
        batch["n_pairs"] = torch.tensor(n)
        batch["labels"] = torch.tensor([bool(e["label"]) for e in examples])
        return self.images.add_images(batch, sequences) if self.images is not None else batch

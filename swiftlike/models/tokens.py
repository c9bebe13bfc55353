"""New special tokens (--new_special_tokens): added to the tokenizer, given embedding rows, trained.

A new token's rows (the input embedding's and an untied output layer's) start at the mean of the model's other rows
(a new token then changes no logit much: Hewitt, "Initializing New Word Embeddings", 2021), computed in float32 from
the base weights alone. With LoRA only those rows train (PEFT's trainable tokens: the adapters hold their values,
not the grown embedding), so every later command grows the base's embedding the same way before it loads the
adapters (`rebuild_rows`, from the `added_tokens` the checkpoint's args.json records); a full fine-tuning
checkpoint holds the grown rows.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError


def read_tokens(values: list) -> list[str]:
    """--new_special_tokens as given (tokens, or .txt files with one token a line) -> the tokens, in order."""
    tokens = []
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"--new_special_tokens: {value!r} is not a token (a non-empty string is expected)")
        if value.endswith(".txt"):
            try:
                lines = Path(value).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(f"--new_special_tokens {value}: cannot read it (a .txt file of one token a line): "
                                f"{getattr(e, 'strerror', None) or e}") from None
            tokens += [line.strip() for line in lines if line.strip()]
        else:
            tokens.append(value)
    seen = set()
    for token in tokens:
        if token in seen:
            raise UserError(f"--new_special_tokens: {token!r} is given twice")
        seen.add(token)
    return tokens


def listed(tokens) -> str:
    """Tokens for a message: the first eight, then the last."""
    tokens = list(tokens)
    return ", ".join(tokens[:8]) + (f", ... {tokens[-1]} ({len(tokens)} tokens)" if len(tokens) > 8 else "")


def add_tokens(tokenizer, tokens: list[str], rows: int | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """Adds the tokens the tokenizer lacks as special tokens (never split, kept in decoded text):
    ({added token: id}, {token it already had: id}). A token it had with an id past the model's `rows` embedding
    rows counts as added: it gets rows as the added ones do."""
    vocab = tokenizer.get_vocab()
    known = {t: vocab[t] for t in tokens if t in vocab and (rows is None or vocab[t] < rows)}
    new = [t for t in tokens if t not in known and t not in vocab]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    vocab = tokenizer.get_vocab()
    added = {t: vocab.get(t) for t in tokens if t not in known}
    for token, i in added.items():
        if i is None or tokenizer(token, add_special_tokens=False)["input_ids"] != [i]:
            raise UserError(f"--new_special_tokens: the tokenizer did not take {token!r} as one token")
    return added, known


def embedding_rows(model) -> int:
    return model.get_input_embeddings().num_embeddings  # (a ZeRO-3 partitioned weight is empty; this is not)


def refuse_rowless_tokens(tokenizer, rows: int, what: str, remedy: str) -> None:
    """One line naming the tokenizer's tokens whose ids the model has no embedding row for (the first forward that
    met one would fail with an index error, on a GPU a device-side assert)."""
    if len(tokenizer) <= rows:
        return
    past = dict(sorted(((t, i) for t, i in tokenizer.get_vocab().items() if i >= rows), key=lambda item: item[1]))
    if past:
        raise UserError(f"{what}: the tokenizer has {len(past)} token{'s' if len(past) > 1 else ''} past the model's "
                        f"{rows} embedding rows ({listed(f'{t} (id {i})' for t, i in past.items())}); {remedy}")


def rebuild_rows(model, ids) -> None:
    """The rows of the added token ids (the tokenizer's last): the embedding (and an untied output layer) grown to
    hold them where it has too few rows, then every added row (and any row the growth made) set to the mean of the
    others, in float32."""
    ids = sorted(set(ids or ()))
    if not ids:
        return
    rows, size = model.get_input_embeddings().weight.shape[0], ids[-1] + 1
    if rows < size:
        model.resize_token_embeddings(size, mean_resizing=False)
    fill = sorted(set(ids) | set(range(rows, size)))
    layers = {id(layer): layer for layer in (model.get_input_embeddings(), model.get_output_embeddings())
              if layer is not None}
    with torch.no_grad():
        for layer in layers.values():
            w = layer.weight
            index = torch.tensor(fill, device=w.device)
            others = torch.sum(w, 0, dtype=torch.float32) - torch.sum(w[index], 0, dtype=torch.float32)
            w[index] = (others / (w.shape[0] - len(fill))).to(w.dtype)


def trainable_rows(model, ids) -> dict[str, list[int]] | None:
    """PEFT's `trainable_token_indices`: the added rows of the input embedding and of an untied output layer (a tied
    one follows the embedding)."""
    ids = sorted(set(ids or ()))
    if not ids:
        return None
    names = {id(module): name for name, module in model.named_modules()}
    out = {names[id(model.get_input_embeddings())]: ids}
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        out[names[id(head)]] = ids
    return out

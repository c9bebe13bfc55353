"""--neftune_noise_alpha (NEFTune, Jain et al. 2023): uniform noise in [-m, m], m = alpha / sqrt(L d), on the input
embeddings of the trained forward only, L the token's own sequence length in padded and packed batches alike."""
import json

import pytest
import torch

import swiftlike as wb
from swiftlike.data.collate import collate_padded, collate_padding_free
from swiftlike.models import build_miniature
from swiftlike.train.loss import CausalLMLoss, sequence_lengths

ROWS = [{"input_ids": list(range(5, 5 + n)), "labels": list(range(5, 5 + n))} for n in (7, 30, 64)]


def test_each_token_gets_its_own_sequence_s_length():
    packed = collate_padding_free(ROWS)
    assert sequence_lengths(packed["input_ids"], seq_lens=packed["seq_lens"]).tolist() == [[7] * 7 + [30] * 30 +
                                                                                           [64] * 64]
    padded = collate_padded(ROWS, 0)
    lengths = sequence_lengths(padded["input_ids"], padded["attention_mask"])
    assert lengths.shape == (3, 64) and lengths[:, 0].tolist() == [7, 30, 64]
    assert sequence_lengths(torch.zeros(2, 9, dtype=torch.long)).unique().tolist() == [9]


def _noise(objective, batch, train: bool) -> list[torch.Tensor]:
    """The noise the embedding's output carries, per row of the batch (its real tokens)."""
    seen = []
    embedding = objective.causal_lm.get_input_embeddings()
    handle = embedding.register_forward_hook(lambda m, a, out: seen.append(out.detach()))  # (after NEFTune's)
    objective.model.train(train)
    with torch.no_grad():
        objective.hidden_states(**{k: v for k, v in batch.items() if k != "targets"})
    handle.remove()
    return seen[0] - embedding.weight.detach()[batch["input_ids"]]


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_the_noise_is_uniform_within_alpha_over_sqrt_l_d_and_only_while_training(layout):
    torch.manual_seed(0)
    model = build_miniature("Qwen/Qwen3-0.6B")
    objective = CausalLMLoss(model, neftune_alpha=5.0)
    batch = collate_padded(ROWS, 0) if layout == "padded" else collate_padding_free(ROWS)
    noise = _noise(objective, batch, train=True)
    d = model.config.hidden_size
    for i, row in enumerate(ROWS):
        n = len(row["input_ids"])
        part = noise[i, :n] if layout == "padded" else noise[0, sum(len(r["input_ids"]) for r in ROWS[:i]):][:n]
        bound = 5.0 / (n * d) ** 0.5
        assert part.abs().max() <= bound * (1 + 1e-6) and part.abs().max() > 0.95 * bound
        assert part.mean().abs() < 0.1 * bound and part.std() == pytest.approx(bound / 3 ** 0.5, rel=0.15)
    assert torch.equal(_noise(objective, batch, train=False), torch.zeros_like(noise))  # evaluation: none
    assert torch.equal(_noise(CausalLMLoss(model), batch, train=True), torch.zeros_like(noise))  # not asked: none


def test_a_run_with_neftune_trains_noisier_and_records_it(tmp_path):
    common = dict(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], max_steps=2,
                  logging_steps=1, torch_dtype="float32")
    plain = wb.sft(**common, output_dir=str(tmp_path / "plain"))
    noisy = wb.sft(**common, neftune_noise_alpha=50.0, output_dir=str(tmp_path / "noisy"))
    first = [run.log_history[0]["loss"] for run in (plain, noisy)]
    assert first[0] != first[1] and abs(first[0] - first[1]) < 1.0  # the same batch, noised embeddings
    assert json.loads((tmp_path / "noisy" / "args.json").read_text())["neftune_noise_alpha"] == 50.0

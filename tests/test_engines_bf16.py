"""bf16 full training keeps small updates: the optimizer is AdamW with stochastic rounding wherever trainable weights
are bf16 (train/engines.make_optimizer, train/optim.RoundingAdamW; torchao's for --optim adamw_8bit/4bit), where torch's AdamW rounds every update smaller than
half a bf16 step away and the weights never move."""
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import logged_steps, wb_cli

import swiftlike as wb
from swiftlike.errors import UserError
from swiftlike.train.engines import EngineSettings, make_optimizer
from swiftlike.train.optim import LOW_BITS, RoundingAdamW, adamw_update, random_bits

REPO = Path(__file__).resolve().parents[1]
SETTINGS = EngineSettings(learning_rate=1e-4, weight_decay=0.0, max_grad_norm=1.0, gradient_accumulation_steps=1)


def _steps(optimizer_of, n=200, device="cpu"):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.ones(20480, dtype=torch.bfloat16, device=device))  # (whole blocks: torchao quantizes its moments)
    opt = optimizer_of([{"params": [p], "lr": 1e-4}])
    for _ in range(n):
        p.grad = torch.ones_like(p)
        opt.step()
    return float(p.detach().float().mean())


def test_stochastic_rounding_keeps_updates_that_plain_bf16_adamw_loses(capsys):
    assert _steps(lambda g: torch.optim.AdamW(g, lr=1e-4, weight_decay=0.0)) == 1.0  # 200 updates of 1e-4: lost
    assert _steps(lambda g: make_optimizer(g, SETTINGS)) == pytest.approx(0.98, abs=2e-3)  # kept in expectation
    assert "bf16 stochastic rounding" in capsys.readouterr().out
    # fp32 weights (LoRA adapters, --torch_dtype float32) keep torch's AdamW, its fused kernel where the device has one
    fp32 = make_optimizer([{"params": [torch.nn.Parameter(torch.ones(3))]}], SETTINGS)
    assert type(fp32) is torch.optim.AdamW and fp32.defaults["fused"]


def test_the_fused_adamw_step_equals_the_multi_tensor_one():
    def run(make):
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(64, 32, generator=g)) for _ in range(3)]
        opt = make([{"params": params, "weight_decay": 0.1}])
        for _ in range(20):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        return torch.cat([p.detach().flatten() for p in params])

    fused = run(lambda groups: make_optimizer(groups, SETTINGS))
    foreach = run(lambda groups: torch.optim.AdamW(groups, lr=SETTINGS.learning_rate, betas=SETTINGS.betas,
                                                   eps=SETTINGS.eps, foreach=True))
    torch.testing.assert_close(fused, foreach, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("optim, state_bytes", [("adamw_8bit", 2), ("adamw_4bit", 1)])
def test_quantized_adamw_keeps_small_bf16_updates_in_quantized_moments(optim, state_bytes, device, capsys):
    """--optim adamw_8bit / adamw_4bit (torchao) on bf16 weights: the moments take 2 / 1 bytes a parameter (plus a
    scale a block), and the weights still round stochastically (plain rounding would leave them at 1.0)."""
    opts = []
    settings = replace(SETTINGS, optim=optim, betas=(0.9, 0.95), eps=1e-6)
    assert _steps(lambda g: opts.append(make_optimizer(g, settings)) or opts[0], device=device) == \
        pytest.approx(0.98, abs=3e-3)
    assert f"AdamW{optim[-4:].removeprefix('_')} with bf16 stochastic rounding" in capsys.readouterr().out
    assert opts[0].param_groups[0]["betas"] == (0.9, 0.95) and opts[0].param_groups[0]["eps"] == 1e-6
    state = next(iter(opts[0].state.values()))
    moments = [state[k] for k in ("exp_avg", "exp_avg_sq")]
    stored = sum(t.nbytes for m in moments for t in (getattr(m, n) for n in m.__tensor_flatten__()[0]))
    assert state_bytes * 20480 <= stored <= state_bytes * 20480 * 1.07


def test_torchao_rounding_bits_do_not_depend_on_other_draws():
    """torchao's stochastic rounding draws from torch's global generator; DDP replicas draw other numbers between
    steps (NEFTune's noise has each one's token count). Its step runs seeded from (seed, step), so two replicas
    whose other draws differ still hold equal weights (they drifted apart: ~850 of 4,096 weights in 20 steps)."""
    from swiftlike.train.engines import DDPEngine

    settings = replace(SETTINGS, optim="adamw_8bit", learning_rate=1e-3)
    replicas = []
    for draws in (0, 1000):
        torch.manual_seed(0)
        model = torch.nn.Linear(64, 64, bias=False).to(torch.bfloat16)
        start = model.weight.detach().clone()
        engine = DDPEngine(model, model, settings)
        for step in range(20):
            torch.rand(draws + step)  # the replicas' other draws differ
            model.weight.grad = torch.full_like(model.weight, 1e-3) * (1 + step % 3)
            engine.step()
        replicas.append(model.weight.detach().clone())
    assert torch.equal(*replicas) and not torch.equal(replicas[0], start)


def test_every_optim_choice_and_alias_has_an_optimizer():
    from dataclasses import fields

    from swiftlike.config import SFTConfig
    from swiftlike.train.engines import OPTIMIZERS

    optim = next(f for f in fields(SFTConfig) if f.name == "optim")
    assert set(optim.metadata["choices"]) == set(OPTIMIZERS) >= set(optim.metadata["aliases"].values())
    # transformers' names (a recipe's `optim: adamw_torch_fused`) are read as ours, recorded as ours
    from swiftlike.config import build_config

    cfg = build_config(SFTConfig, dict(model="Qwen/Qwen3-8B", full=True, dry_run=True, optim="adamw_torch_fused"))
    assert cfg.optim == "adamw"


def test_paged_optimizers_refuse_bf16_weights_they_would_round_to_nearest():
    bf16 = [{"params": [torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))]}]
    with pytest.raises(UserError, match="paged_adamw_8bit rounds bf16 weights to nearest"):
        make_optimizer(bf16, replace(SETTINGS, optim="paged_adamw_8bit"))
    # DeepSpeed hands the optimizer its fp32 master partitions: nothing to round there
    assert make_optimizer(bf16, replace(SETTINGS, optim="paged_adamw_8bit"), engine="deepspeed")


def _reference(p, g, m, v, step, lr, decay, betas=(0.9, 0.999), eps=1e-8):
    """AdamW in float64 from the bf16 inputs: (exact new weight, new moments), what RoundingAdamW computes in
    fp32 before rounding."""
    p, g, m, v = (t.double() for t in (p, g, m, v))
    m = betas[0] * m + (1 - betas[0]) * g
    v = betas[1] * v + (1 - betas[1]) * g * g
    denom = (v / (1 - betas[1] ** step)).sqrt() + eps
    return p * (1 - lr * decay) - lr / (1 - betas[0] ** step) * m / denom, m, v


def _bf16_neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 values next to each float64 value: towards zero and away from it."""
    bits = x.float().view(torch.int32)
    down = (bits & -(1 << LOW_BITS)).view(torch.float32).double()
    up = ((bits & -(1 << LOW_BITS)) + (1 << LOW_BITS)).view(torch.float32).double()
    return down, up


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("decay", [0.0, 0.1])
@pytest.mark.parametrize("rows", [(64,), (20, 5, 1, 30, 8)], ids=["one", "buckets"])
def test_each_step_is_adamw_rounded_to_a_neighbouring_bf16_value_without_bias(rows, decay, device, monkeypatch):
    """Three steps from random bf16 weights, gradients of mixed scale: after each, every weight is one of the two
    bf16 values around the exact (float64) AdamW result from the same inputs, the moments are that result's
    rounded to nearest (to one bf16 step), and the rounding is unbiased (up as often as the distances say).
    "buckets": the same 64 x 1000 values as five parameters, with buckets made small (ALONE 25,000 and BUCKET 15,000
    values): one stepped in place (30 rows), one alone in its bucket (20), three concatenated into one (5, 1, 8)."""
    from swiftlike.train import optim

    monkeypatch.setattr(optim, "ALONE", {"cpu": 25_000, "cuda": 25_000})
    monkeypatch.setattr(optim, "BUCKET", 15_000)
    torch.manual_seed(0)
    whole = (torch.randn(64, 1000) * 0.05).to(torch.bfloat16).to(device)
    params = [torch.nn.Parameter(part.clone()) for part in whole.split(rows)]
    opt = RoundingAdamW(params, lr=3e-4, weight_decay=decay)
    cat = (lambda ts: torch.cat([t.detach().cpu() for t in ts]))
    for step in (1, 2, 3):
        grads = (torch.randn(64, 1000) * torch.logspace(-6, 0, 1000)).to(torch.bfloat16).to(device)
        for param, grad in zip(params, grads.split(rows)):
            param.grad = grad.clone()
        states = [opt.state[q] for q in params]
        m, v = ((cat(st["exp_avg"] for st in states), cat(st["exp_avg_sq"] for st in states)) if states[0]
                else (torch.zeros(64, 1000),) * 2)
        exact, m_exact, v_exact = _reference(cat(params), grads.cpu(), m, v, step, 3e-4, decay)
        opt.step()
        new = cat(params).double()
        down, up = _bf16_neighbours(exact)
        assert bool(((new == down) | (new == up)).all()), step
        # how often it rounded up: the mean of the exact value's position between its neighbours
        share = (exact - down) / (up - down)
        moved = share > 1e-3
        assert float((new == up)[moved].double().mean()) == pytest.approx(float(share[moved].mean()), abs=0.01)
        # to one bf16 step (fp32 then bf16: a value near a tie may round to the other neighbour), or fp32's
        # rounding of the inputs where the moving average cancels them to near zero
        grad = grads.cpu().double()
        for key, exact_moment, before, new_term in (("exp_avg", m_exact, m, grad),
                                                    ("exp_avg_sq", v_exact, v, grad ** 2)):
            error = (cat(st[key] for st in states).double() - exact_moment).abs()
            bound = 2 ** -7 * exact_moment.abs() + 2 ** -20 * (before.double().abs() + new_term.double().abs())
            assert bool((error <= bound).all()), step


def test_parameters_are_bucketed_in_order_by_size_step_device_and_dtypes(monkeypatch):
    from swiftlike.train import optim

    def item(i, n, step=1, dtype=torch.bfloat16):
        t = torch.empty(n, dtype=dtype)
        return (i, step, (t, t, t, t))

    monkeypatch.setattr(optim, "ALONE", {"cpu": 30, "cuda": 1000})  # (the tensors are on the CPU)
    monkeypatch.setattr(optim, "BUCKET", 20)
    items = [item(0, 5), item(1, 40), item(2, 6), item(3, 7, dtype=torch.float32), item(4, 10), item(5, 3, step=2),
             item(6, 4)]
    # 40 >= ALONE: alone; 5 + 6 + 10 would pass 20: 10 starts another bucket, which 4 joins; fp32 and step 2 apart
    assert [[i for i, _, _ in b] for b in optim._buckets(items)] == [[0, 2], [1], [3], [4, 6], [5]]


def test_fp32_parameters_get_adamw_unrounded():
    """A parameter a model keeps in fp32 beside bf16 ones: torch's AdamW's result, to fp32 rounding."""
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(300)), torch.nn.Parameter(torch.randn(300))
    b.data.copy_(a.data)
    ours, theirs = RoundingAdamW([a], lr=1e-2, weight_decay=0.1), torch.optim.AdamW([b], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        a.grad = torch.randn(300)
        b.grad = a.grad.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(a.data, b.data, rtol=1e-6, atol=1e-7)


def test_rounding_is_the_same_in_every_process_and_on_resume(tmp_path):
    """The random bits hash (seed, group, bucket, step, position): two optimizers fed alike round alike (data-
    parallel replicas stay equal), another seed rounds otherwise, and a run restored from a state dict continues
    exactly as the uninterrupted one. Three parameters: one stepped in place (70,000 values, over the CPU's ALONE),
    two concatenated into a bucket."""
    sizes = (70000, 5000, 300)

    def run(seed, steps, state=None, start=None):
        torch.manual_seed(1)
        ps = [torch.nn.Parameter((torch.randn(n) * 0.05).to(torch.bfloat16)) for n in sizes]
        if start is not None:
            for q, value in zip(ps, start):
                q.data.copy_(value)
        opt = RoundingAdamW(ps, lr=1e-4, seed=seed)
        if state is not None:
            opt.load_state_dict(state)
        for step in steps:
            grads = torch.randn(sum(sizes), generator=torch.Generator().manual_seed(step)) * 1e-3
            for q, g in zip(ps, grads.split(sizes)):
                q.grad = g.to(torch.bfloat16)
            opt.step()
        return torch.cat([q.detach() for q in ps]), opt

    a, _ = run(0, range(4))
    b, _ = run(0, range(4))
    c, _ = run(7, range(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    half, opt = run(0, range(2))
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    resumed, _ = run(0, range(2, 4), torch.load(tmp_path / "optimizer.pt", weights_only=True),
                     start=half.split(sizes))
    assert torch.equal(resumed, a)


def test_random_bits_are_uniform_and_differ_between_seeds():
    bits = random_bits(1 << 20, torch.tensor(5), "cpu")
    assert bits.dtype == torch.int32 and int(bits.min()) >= 0 and int(bits.max()) < (1 << LOW_BITS)
    for k in range(LOW_BITS):  # every bit set about half the time
        assert float(((bits >> k) & 1).double().mean()) == pytest.approx(0.5, abs=0.005), k
    counts = torch.bincount(bits >> 8, minlength=256).double()  # the top byte: flat
    assert float(counts.std() / counts.mean()) < 0.03
    neighbours = torch.corrcoef(torch.stack([bits[:-1], bits[1:]]).double())[0, 1]
    assert abs(float(neighbours)) < 0.01
    other = random_bits(1 << 20, torch.tensor(6), "cpu")
    assert float((bits == other).double().mean()) < 0.001


def test_the_compiled_step_is_one_graph_whatever_the_length_and_learning_rate():
    """Parameters of several sizes in two groups and a learning rate that changes every step: no recompilation
    after the first graphs (torch.compile with a dynamic length; the learning rate and bias corrections are
    tensors). The compiled kernel computes what the eager function does, the rounding's bits included."""
    from torch._dynamo.utils import counters

    from swiftlike.train.optim import _kernel

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(n) * 0.05).to(torch.bfloat16)) for n in (300, 5000, 70000, 123)]
    opt = RoundingAdamW([{"params": params[:2]}, {"params": params[2:], "lr": 1e-3}], lr=1e-4)
    for _ in range(4):
        for p in params:
            p.grad = (torch.randn(p.shape) * 1e-2).to(torch.bfloat16)
        opt.step()
        for group in opt.param_groups:
            group["lr"] *= 0.5
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])  # (the first may fix its length)
    inputs = [(torch.randn(4000) * s).to(torch.bfloat16) for s in (0.05, 1e-2, 1e-3, 1e-5)]
    inputs[3] = inputs[3].abs()  # (the second moment)
    scalars = (torch.tensor(1e-3), torch.tensor(1 - 0.9 ** 3), torch.tensor((1 - 0.999 ** 3) ** 0.5),
               torch.tensor(99), 0.9, 0.999, 1e-8, 0.1, True)
    eager, compiled = [t.clone() for t in inputs], [t.clone() for t in inputs]
    adamw_update(*eager, *scalars)
    _kernel(torch.device("cpu"))(*compiled, *scalars)
    for a, b in zip(eager, compiled):  # fused fp32 arithmetic may differ in a last bit: one bf16 step at most
        torch.testing.assert_close(a, b, rtol=2 ** -7, atol=1e-9)  # (or near zero, where the average cancels)
    assert float((eager[0] != compiled[0]).double().mean()) < 0.001


def test_where_compiling_fails_the_step_runs_eagerly(monkeypatch, capsys):
    from swiftlike.train import optim

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore")

    monkeypatch.setattr(optim, "_KERNELS", {})
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    assert _steps(lambda g: RoundingAdamW(g, lr=1e-4, weight_decay=0.0), n=20) < 1.0
    err = capsys.readouterr().err
    assert err.count("could not be compiled (RuntimeError: no C++ compiler found)") == 1, err


def test_a_torchao_optimizer_state_loads():
    """Checkpoints of full bf16 runs written before RoundingAdamW (torchao's _AdamW, its lr a tensor) resume."""
    torchao_optim = pytest.importorskip("torchao.optim")
    p = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    old = torchao_optim._AdamW([p], lr=1e-4, bf16_stochastic_round=True)
    p.grad = torch.ones_like(p)
    old.step()
    new = RoundingAdamW([p], lr=1e-4)
    new.load_state_dict(old.state_dict())
    p.grad = torch.ones_like(p)
    new.step()
    assert int(new.state[p]["step"]) == 2 and float(p.float().mean()) < 1.0


@pytest.mark.slow
def test_full_training_in_bf16_moves_weights_by_less_than_a_bf16_step(tmp_path, monkeypatch):
    """lr 1e-5 on weights of magnitude ~0.02 (bf16 step there ~1.2e-4): with stochastic rounding 6.4% of a matrix's
    weights moved in 3 steps, with torch's AdamW 1.6% (only the smallest weights, whose bf16 step is finer)."""
    pytest.importorskip("torchao")
    from safetensors.torch import load_file

    seeds = []  # the run's --seed (default 42) seeds the rounding's bits
    init = RoundingAdamW.__init__
    monkeypatch.setattr(RoundingAdamW, "__init__", lambda self, *a, **kw: (seeds.append(kw["seed"]),
                                                                            init(self, *a, **kw))[1])
    run = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=["examples/data/identity.jsonl"], full=True,
                 torch_dtype="bfloat16", learning_rate=1e-5, max_steps=3, output_dir=str(tmp_path / "run"))
    assert seeds == [42]
    from swiftlike.models.loader import build_miniature

    name = "model.layers.0.mlp.down_proj.weight"
    base = build_miniature("Qwen/Qwen3-0.6B").state_dict()[name].to(torch.bfloat16)  # (the run's base, seed 42)
    trained = load_file(str(tmp_path / "run" / "checkpoint-3" / "model.safetensors"))[name]
    assert trained.dtype == torch.bfloat16
    moved = (trained.float() != base.float()).float().mean()
    assert run.checkpoint and float(moved) > 0.04


@pytest.mark.usefixtures("cpu_processes")
@pytest.mark.slow
def test_fsdp_bf16_training_rounds_each_shard_and_resumes_bit_for_bit(tmp_path):
    """Under FSDP2 (two processes, parameters sharded as DTensors) bf16 full training steps with the rounding
    optimizer on each rank's shard: small updates are kept as in one process, and a run resumed from its step-2
    checkpoint ends with exactly the uninterrupted run's weights and losses (the rounding's bits are a hash)."""
    import shutil

    from safetensors.torch import load_file

    from swiftlike.models.loader import build_miniature

    def run(out, *extra):
        r = wb_cli("sft", "--model", "Qwen/Qwen3-0.6B", "--miniature", "--dataset", "examples/data/identity.jsonl",
                   "--full", "--torch_dtype", "bfloat16", "--fsdp", "full_shard", "--nproc_per_node", "2",
                   "--learning_rate", "1e-5", "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1",
                   "--output_dir", str(out), *extra, cwd=REPO)
        return r.stdout + r.stderr, [step["loss"] for step in logged_steps(r)]

    log, losses = run(tmp_path / "straight")
    assert "bf16 stochastic rounding" in log and len(losses) == 4
    name = "model.layers.0.mlp.down_proj.weight"
    base = build_miniature("Qwen/Qwen3-0.6B").state_dict()[name].to(torch.bfloat16)
    weights = load_file(str(tmp_path / "straight" / "checkpoint-4" / "model.safetensors"))
    assert weights[name].dtype == torch.bfloat16 and float((weights[name] != base).float().mean()) > 0.04
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoint-4")
    log, resumed = run(tmp_path / "resumed", "--resume")
    assert "resuming from" in log and resumed == losses[2:]
    again = load_file(str(tmp_path / "resumed" / "checkpoint-4" / "model.safetensors"))
    assert all(torch.equal(weights[k], again[k]) for k in weights)

"""Reward functions for `wb grpo`: built-ins, registered names, `file.py:function`, Python callables and a
reward model. Every function is called once per generation batch with keyword arguments:

    completions     list[str]          the generated answers (decoded, special tokens removed)
    prompts         list[list[dict]]   the prompt conversations
    completion_ids  list[list[int]]    the generated token ids
    <column>        list               every other dataset column, by its name (e.g. solution)

and returns one float per completion (None where it cannot score one). A function may be `async`. It receives
only the arguments it names, unless it takes **kwargs.
"""
from __future__ import annotations

import asyncio
import importlib.util
import inspect
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .builtin import BUILTINS, RewardContext

_REGISTERED: dict[str, Callable] = {}


def register_reward(name):
    """Decorator: make a reward function available by name (`--reward_funcs name`): `@register_reward("name")`,
    or bare `@register_reward` for the function's own name. A built-in's name is refused (it would never be used)."""
    if callable(name):  # (used bare: the function itself)
        return register_reward(name.__name__)(name)
    if not isinstance(name, str) or not name:
        raise UserError(f"register_reward: the name must be a non-empty string, got {name!r}")
    if name in BUILTINS:
        raise UserError(f"register_reward: {name!r} is a built-in reward function ({', '.join(sorted(BUILTINS))}); "
                        "register yours under another name")

    def wrap(fn: Callable) -> Callable:
        if not callable(fn):
            raise UserError(f"register_reward({name!r}) decorates a function, got {type(fn).__name__}")
        _REGISTERED[name] = fn
        return fn
    return wrap


@dataclass
class Reward:
    name: str
    fn: Callable
    accepts_all: bool
    params: frozenset

    def __call__(self, kwargs: dict) -> list:
        args = kwargs if self.accepts_all else {k: v for k, v in kwargs.items() if k in self.params}
        try:
            out = self.fn(**args)
            if inspect.isawaitable(out):
                out = _run(out)
            return list(out)
        except UserError:
            raise
        except Exception as e:  # the user's code: name it in one line (--debug shows the chained traceback)
            raise UserError(f"reward function {self.name!r} failed: {type(e).__name__}: {e}") from e


def _run(awaitable):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(awaitable))
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from inside a running loop (notebooks)
        return pool.submit(asyncio.run, _await(awaitable)).result()


async def _await(awaitable):
    return await awaitable


def wrap(name: str, fn: Callable) -> Reward:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return Reward(name, fn, True, frozenset())
    accepts_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    return Reward(name, fn, accepts_all, frozenset(sig.parameters))


def _from_file(spec: str) -> tuple[str, Callable]:
    path, _, func = spec.rpartition(":")
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"--reward_funcs {spec}: no such file {path}")
    stat = file.stat()  # (an edited file is a new module: a notebook re-running wb.grpo gets the edit)
    module_name = f"wb_reward_{file.stem}_{abs(hash((str(file.resolve()), stat.st_mtime_ns, stat.st_size)))}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:  # the user's file: report where it broke in one line
            raise UserError(f"--reward_funcs {spec}: importing {path} failed: {type(e).__name__}: {e}") from None
        sys.modules[module_name] = module
    fn = getattr(module, func, None)
    if not callable(fn):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == module_name]
        raise UserError(f"--reward_funcs {spec}: {path} has no function {func!r} (it defines: "
                        f"{', '.join(names) or 'none'})")
    return func, fn


def resolve(specs: list, ctx: RewardContext) -> list[Reward]:
    """Reward functions from names, `file.py:function` strings and callables."""
    out = []
    for spec in specs:
        if callable(spec):
            out.append(wrap(getattr(spec, "__name__", type(spec).__name__), spec))
        elif spec in BUILTINS:
            out.append(wrap(spec, BUILTINS[spec](ctx)))
        elif spec in _REGISTERED:
            out.append(wrap(spec, _REGISTERED[spec]))
        elif isinstance(spec, str) and ":" in spec and spec.rpartition(":")[0].endswith(".py"):
            out.append(wrap(*_from_file(spec)))
        else:
            known = sorted(BUILTINS) + sorted(_REGISTERED)
            raise UserError(f"unknown reward function {spec!r}; built-in and registered: {', '.join(known)}; or "
                            "give path/to/file.py:function")
    names = [r.name for r in out]
    for r in out:  # two functions of one name would share a metric column
        if names.count(r.name) > 1:
            r.name = f"{r.name}_{names[:out.index(r) + 1].count(r.name)}"
    return out


def score(rewards: list[Reward], kwargs: dict, n: int) -> list[list[float]]:
    """[completion][function] rewards; NaN where a function returned None. A wrong-length answer or a value
    that is not a number is an error naming the function."""
    table = [[float("nan")] * len(rewards) for _ in range(n)]
    for j, reward in enumerate(rewards):
        values = reward(kwargs)
        if len(values) != n:
            raise UserError(f"reward function {reward.name!r} returned {len(values)} values for {n} completions")
        for i, v in enumerate(values):
            if v is None:
                continue
            try:
                table[i][j] = float(v)
            except (TypeError, ValueError):
                raise UserError(f"reward function {reward.name!r} returned {v!r} for completion {i}; expected a "
                                "number or None") from None
            if math.isinf(table[i][j]):  # (NaN is "cannot judge", as None; an infinite reward wrecks the weights)
                raise UserError(f"reward function {reward.name!r} returned {v!r} for completion {i}; rewards must "
                                "be finite (None or NaN where it cannot judge)")
    return table


__all__ = ["BUILTINS", "Reward", "RewardContext", "register_reward", "resolve", "score", "wrap"]

"""`wb infer`: answer a query (or chat) with a base model, a full checkpoint, or a LoRA checkpoint."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .. import accel
from ..config import InferConfig
from ..errors import UserError
from ..models.resolve import load_for_inference  # noqa: F401  (importable from here, as before)


@torch.inference_mode()
def reward_score(model, template, messages: list[dict]) -> float:
    """A reward model's score for a conversation ending in the answer to judge."""
    from ..train.dpo import RewardObjective

    ids = template.encode({"messages": messages})["input_ids"]
    device = next(model.parameters()).device
    scores = RewardObjective(model).scores(torch.tensor([ids], device=device),
                                           torch.arange(len(ids), device=device)[None],
                                           torch.tensor([len(ids)], device=device))
    return float(scores[0])


@torch.inference_mode()
def generate(model, tokenizer, template, messages: list[dict], max_new_tokens: int = 512, temperature: float = 0.0,
             top_p: float = 1.0, enable_thinking: bool | None = None, raw: bool = False) -> dict | str:
    """The reply as an assistant message ({role, content, reasoning?, tool_calls?}: reasoning split off, empty
    think blocks dropped, tool calls parsed), or with `raw` the generated text up to the stop token."""
    opts = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    ids = torch.tensor([template.encode_prompt(messages, **opts)], device=next(model.parameters()).device)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
        {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         eos_token_id=template.stop_token_ids or tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **sampling)
    new = out[0, ids.shape[1]:].tolist()
    stops = set(template.stop_token_ids) | {tokenizer.pad_token_id, tokenizer.eos_token_id}
    while new and new[-1] in stops:  # the stop token ends the turn; it is not part of the answer
        new.pop()
    # special tokens stay: tool-call markers such as [TOOL_CALLS] are special in some vocabularies
    text = tokenizer.decode(new, skip_special_tokens=False)
    return text if raw else template.parse_response(text)


def show(message: dict) -> str:
    """An assistant message as a user reads it: reasoning marked, tool calls as JSON."""
    parts = [f"[thinking] {message['reasoning'].strip()}"] if message.get("reasoning") else []
    if message["content"]:
        parts.append(message["content"])
    parts += [f"[tool call] {json.dumps(c['function'], ensure_ascii=False)}" for c in message.get("tool_calls", [])]
    return "\n".join(parts)


def run_infer(cfg: InferConfig) -> str | None:
    accel.seed_everything(cfg.seed)
    model, tokenizer, template = load_for_inference(cfg.model, cfg.adapters, cfg.miniature, cfg.torch_dtype, cfg.hub,
                                                    cfg.template, cfg.trust_remote_code, cfg.attn_implementation)
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    if getattr(model, "swiftlike_task", "sft") == "rm":
        if cfg.query is None or cfg.response is None:
            raise UserError("a reward model scores answers: give --query and --response")
        score = reward_score(model, template, system + [{"role": "user", "content": cfg.query},
                                                        {"role": "assistant", "content": cfg.response}])
        print(f"{score:.6f}")
        return f"{score:.6f}"
    kw = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
              enable_thinking=cfg.enable_thinking)
    if cfg.query is not None:
        answer = generate(model, tokenizer, template, system + [{"role": "user", "content": cfg.query}], **kw)
        print(show(answer))
        return answer["content"]
    history = list(system)
    print("[wb] chat: type a message; 'clear' resets the conversation, 'exit' quits.")
    while True:
        try:
            query = input("user> ")
        except EOFError:
            return None
        if query.strip() in ("exit", "quit"):
            return None
        if query.strip() == "clear":
            history = list(system)
            continue
        history.append({"role": "user", "content": query})
        answer = generate(model, tokenizer, template, history, **kw)
        print(f"assistant> {show(answer)}")
        history.append(answer)

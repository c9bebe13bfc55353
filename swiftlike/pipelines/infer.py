"""`wb infer`: answer a query (or chat) with a base model, a full checkpoint, or a LoRA checkpoint."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .. import accel
from ..config import InferConfig
from ..errors import UserError
from ..hub import download, is_local
from ..models import build_miniature, load_model, load_tokenizer
from ..models.loader import model_meta, quiet_libraries
from ..templates import get_template


def _read_args(ckpt: str) -> dict:
    path = Path(ckpt) / "args.json"
    if not path.is_file():
        raise UserError(f"{ckpt}: no args.json; is this a checkpoint written by `wb sft`?")
    return json.loads(path.read_text(encoding="utf-8"))


def _template_name(explicit: str | None, args: dict | None, model: str) -> str:
    if explicit:
        return explicit
    if args and args.get("template"):
        return args["template"]
    meta = model_meta(model)
    return meta.template if meta is not None else model  # unregistered: the tokenizer's own chat template


def load_for_inference(model: str = "", adapters: str | None = None, miniature: bool = False,
                       torch_dtype: str = "auto", hub: str = "huggingface", template: str | None = None,
                       trust_remote_code: bool = False, attn_implementation: str | None = None):
    """(model, tokenizer, template), rebuilt from a checkpoint's args.json where there is one."""
    quiet_libraries()
    dtype = accel.resolve_dtype(torch_dtype)
    args = None
    if adapters:
        if not Path(adapters).is_dir():
            raise UserError(f"--adapters {adapters}: no such directory")
        args = _read_args(adapters)
        base = model or args.get("base_model_dir") or args["model"]
        if not is_local(base):
            base = download(base, args.get("hub", hub), with_code=trust_remote_code)
        tokenizer = load_tokenizer(adapters)
        reward = args.get("task") == "rm"
        net = load_model(base, dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code,
                         reward_head=reward, pad_token_id=tokenizer.pad_token_id, announce_head=False)
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, adapters)
        if reward and accel.is_main_process():  # the base has no head; the adapters hold it (modules_to_save)
            print(f"[wb] reward head: loaded from {adapters}", file=sys.stderr)
        name = _template_name(template, args, args["model"])
    elif is_local(model) and (Path(model) / "args.json").is_file():
        args = _read_args(model)
        tokenizer = load_tokenizer(model)
        net = load_model(model, dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code,
                         reward_head=args.get("task") == "rm", pad_token_id=tokenizer.pad_token_id)
        name = _template_name(template, args, args["model"])
    else:
        tokenizer = load_tokenizer(model, hub, trust_remote_code, miniature=miniature)
        if miniature:
            net = build_miniature(model, hub, dtype=dtype).to(accel.device())
        else:
            path = model if is_local(model) else download(model, hub, with_code=trust_remote_code)
            net = load_model(path, dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
        name = _template_name(template, None, model)
    net.eval()
    net.swiftlike_task = (args or {}).get("task", "sft")
    return net, tokenizer, get_template(name, tokenizer)


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

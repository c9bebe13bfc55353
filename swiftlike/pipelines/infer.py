"""`wb infer`: answer a query, chat, or answer a whole dataset (`--dataset --output`, resumable) with a base model,
a full checkpoint or export, or a LoRA checkpoint, on the batched engine of swiftlike/infer/."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

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


_GENERATE_OPTIONS = ("top_k", "repetition_penalty", "stop", "seed", "n")


def generate(model, tokenizer, template, messages: list[dict], max_new_tokens: int = 512, temperature: float = 0.0,
             top_p: float = 1.0, enable_thinking: bool | None = None, raw: bool = False, tools: list | None = None,
             **sampling) -> dict | str | list:
    """The reply as an assistant message ({role, content, reasoning?, tool_calls?}: reasoning split off, empty
    think blocks dropped, tool calls parsed), or with `raw` the generated text up to the stop token. `tools`: the
    functions the model may call (OpenAI's form), rendered as the template renders them. `sampling`: top_k,
    repetition_penalty, stop, seed, and n (n > 1: a list of n replies)."""
    from ..infer import SamplingParams
    from ..infer.engine import TransformersEngine

    unknown = sorted(set(sampling) - set(_GENERATE_OPTIONS))
    if unknown:
        raise UserError(f"generate() got an unknown option {unknown[0]!r} (options: max_new_tokens, temperature, "
                        f"top_p, enable_thinking, raw, tools, {', '.join(_GENERATE_OPTIONS)})")
    if getattr(model, "swiftlike_task", None) == "rm":
        raise UserError("this is a reward model (`wb rm`): it scores answers (wb infer --response, "
                        "swiftlike.pipelines.infer.reward_score), it does not write them")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, **sampling)
    params.validate()
    ids = template.encode_prompt(messages, tools, **_thinking(enable_thinking))
    was_training = model.training
    try:
        with TransformersEngine(model, tokenizer, template, max_batch_size=max(params.n, 1)) as engine:
            completions = engine.generate([ids], params)[0]
    finally:
        model.train(was_training)
    # special tokens stay: tool-call markers such as [TOOL_CALLS] are special in some vocabularies
    replies = [c.text if raw else template.read_answer(ids, c.text, c.finish_reason) for c in completions]
    return replies if params.n > 1 else replies[0]


def _thinking(enable_thinking: bool | None) -> dict:
    return {} if enable_thinking is None else {"enable_thinking": enable_thinking}


def show(message: dict) -> str:
    """An assistant message as a user reads it: reasoning marked, tool calls as JSON."""
    parts = [f"[thinking] {message['reasoning'].strip()}"] if message.get("reasoning") else []
    if message["content"]:
        parts.append(message["content"])
    parts += [f"[tool call] {json.dumps(c['function'], ensure_ascii=False)}" for c in message.get("tool_calls", [])]
    return "\n".join(parts)


def run_infer(cfg: InferConfig) -> str | None:
    """`wb infer`: score (reward models), answer --query, run --dataset into --output, or chat."""
    accel.seed_everything(cfg.seed)
    params = sampling_params(cfg)  # bad values fail before any model is loaded
    if cfg.infer_backend == "vllm":
        _refuse_response(cfg)
        # (--json_schema after a prompt that opens a think block is refused before vLLM loads the model)
        engine = open_vllm_engine(cfg, lambda template: after_reasoning(params, template, cfg.enable_thinking, True))
    else:
        from ..infer.engine import TransformersEngine

        model, tokenizer, template = load_for_inference(cfg.model, cfg.adapters, cfg.miniature, cfg.torch_dtype,
                                                        cfg.hub, cfg.template, cfg.trust_remote_code,
                                                        cfg.attn_implementation)
        if getattr(model, "swiftlike_task", "sft") == "rm":
            if cfg.json_schema is not None:
                raise UserError("--json_schema constrains generated answers; a reward model scores --response")
            return score_answer(model, template, cfg)
        _refuse_response(cfg)
        engine = TransformersEngine(model, tokenizer, template, max_batch_size=cfg.max_batch_size)
        params = after_reasoning(params, template, cfg.enable_thinking)
    with engine:
        if cfg.dataset:
            return infer_dataset(engine, cfg, params)
        if cfg.query is not None:
            return answer_query(engine, cfg, params)
        return chat(engine, cfg, params)


def _refuse_response(cfg: InferConfig) -> None:
    if cfg.response is not None:  # (it was ignored: an answer was generated instead of a score)
        raise UserError("--response is scored by reward models (`wb rm` checkpoints); this model generates "
                        "answers: drop --response")


def sampling_params(cfg: InferConfig, seed: int | None = None):
    from ..infer import SamplingParams

    return SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k, repetition_penalty=cfg.repetition_penalty, stop=tuple(cfg.stop),
                          seed=cfg.seed if seed is None else seed, n=cfg.num_return_sequences,
                          json_schema=json_schema(cfg.json_schema)).validate()


def after_reasoning(params, template, enable_thinking: bool | None, vllm: bool = False):
    """--json_schema for a thinking model: the JSON follows the reasoning its prompts allow (every prompt of a run
    ends in the same generation prompt; templates/call_grammar.py). vLLM takes the plain schema: a prompt that opens
    a think block, which the answer must close before its JSON, is refused there."""
    from dataclasses import replace

    from ..infer.grammar import check_json_schema, json_after_reasoning
    from ..templates.call_grammar import needs_grammar, prompt_think

    if params.json_schema is None:
        return params
    think = prompt_think(template.tokenizer, template.encode_prompt([{"role": "user", "content": "?"}],
                                                                    **_thinking(enable_thinking)))
    if vllm:
        check_json_schema(params.json_schema)  # (before the model loads; the engine would check it at submit)
        if think == "open":
            raise UserError(f"--json_schema: the {template.name} template's prompt opens a think block, which the "
                            "answer must close before its JSON; vLLM is not given that grammar: use --infer_backend "
                            "transformers")
        return params
    if not needs_grammar(template, think):
        return params  # (the engine checks the plain schema at submit)
    return replace(params, json_schema=None, grammar=json_after_reasoning(template, params.json_schema, think))


def json_schema(value: str | None) -> str | None:
    """--json_schema: inline JSON, or the text of a .json file (checked to be JSON here, to name the file)."""
    if value is None or value.lstrip().startswith("{"):
        return value
    path = Path(value)
    if not path.is_file():
        raise UserError(f"--json_schema {value}: neither inline JSON (an object) nor a file")
    text = path.read_text(encoding="utf-8")
    try:
        json.loads(text)
    except ValueError as error:
        raise UserError(f"--json_schema {value}: not valid JSON ({error})") from None
    return text


def score_answer(model, template, cfg: InferConfig) -> str:
    if cfg.query is None or cfg.response is None:
        raise UserError("a reward model scores answers: give --query and --response")
    score = reward_score(model, template, _system(cfg.system) + [{"role": "user", "content": cfg.query},
                                                                 {"role": "assistant", "content": cfg.response}])
    print(f"{score:.6f}")
    return f"{score:.6f}"


def _system(text: str | None) -> list[dict]:
    return [{"role": "system", "content": text}] if text else []


def _user(text: str, images: list[str], videos: list[str] = ()) -> dict:
    """A user message: its images and videos (as parts, read relative to the working directory; a folder is a
    video's frames in name order), then its text."""
    if not images and not videos:
        return {"role": "user", "content": text}
    parts = [{"type": "image", "image": i} for i in images] + [{"type": "video", "video": _video(v)} for v in videos]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def _video(path: str):
    """A --video argument: a folder of frames (sorted by name) or a video file / URL as given."""
    folder = Path(path)
    if folder.is_dir():
        frames = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if not frames:
            raise UserError(f"--video {path}: a folder without .png/.jpg/.webp frames")
        return frames
    return path


def _prompt(engine, messages: list[dict], cfg: InferConfig) -> tuple[list[int], dict | None]:
    """A conversation's prompt ids and its images' pixels (vision-language models)."""
    from ..infer import vision

    ids, sources = vision.encode_prompt(engine.template, messages, **_thinking(cfg.enable_thinking))
    return ids, vision.pixels(engine.template, sources)


def answer_query(engine, cfg: InferConfig, params) -> str:
    """Print the answer(s) to --query; return the first one's content."""
    ids, images = _prompt(engine, _system(cfg.system) + [_user(cfg.query, cfg.image, cfg.video)], cfg)
    answers = [engine.template.read_answer(ids, c.text, c.finish_reason)
               for c in engine.generate([ids], params, images=[images])[0]]
    for i, answer in enumerate(answers):
        print((f"[{i + 1}/{len(answers)}] " if len(answers) > 1 else "") + show(answer))
    return answers[0]["content"]


CHAT_HELP = ("[wb] chat: type a message; /clear resets the conversation, /system TEXT sets the system prompt, "
             "/image PATH adds an image to your next message (vision-language models), exit quits.")


def chat(engine, cfg: InferConfig, params) -> None:
    """Interactive chat: the answer is printed as it is generated; Ctrl-C stops an answer."""
    from dataclasses import replace

    system, history, turn, images, videos = cfg.system, [], 0, list(cfg.image), list(cfg.video)
    print(CHAT_HELP)
    while True:
        try:
            query = input("user> ")
        except EOFError:
            print()
            return None
        command = query.strip()
        if command in ("exit", "quit", "/exit", "/quit"):
            return None
        if command in ("/clear", "clear"):
            history, images = [], []
            print("[wb] conversation cleared")
            continue
        if command == "/image" or command.startswith("/image "):
            path = command[len("/image"):].strip()
            if not path:
                print("[wb] /image needs a path, URL or data URI")
                continue
            images.append(path)
            print(f"[wb] image {len(images)} added to your next message")
            continue
        if command == "/system" or command.startswith("/system "):
            system = command[len("/system"):].strip() or None
            print(f"[wb] system prompt {'set' if system else 'removed'}")
            continue
        if not command:
            continue
        history.append(_user(query, images, videos))
        videos = []  # (--video belongs to the first message)
        try:
            ids, pixels = _prompt(engine, _system(system) + history, cfg)
        except UserError as e:  # an unreadable image, an image for a text-only model: say so, keep chatting
            print(f"[wb] {e}")
            history.pop()
            images = []
            continue
        images = []
        try:
            answer = _stream_answer(engine, ids, replace(params, n=1, seed=params.seed + turn), pixels)
        except UserError as e:  # over the context (a long message, or the chat grew): say so, keep chatting
            print(f"[wb] {e}{'; /clear starts a new conversation' if len(history) > 1 else ''}")
            history.pop()
            continue
        turn += 1
        if answer is None:  # stopped with Ctrl-C: the question stays unanswered
            history.pop()
            continue
        history.append(answer)


def _stream_answer(engine, ids: list[int], params, images: dict | None = None) -> dict | None:
    request = engine.submit(ids, params, images=images)
    print("assistant> ", end="", flush=True)
    try:
        for delta in request:
            print(delta.text, end="", flush=True)
    except KeyboardInterrupt:
        request.cancel()
        print("\n[wb] stopped")
        return None
    print()
    done = request.result()[0]
    answer = engine.template.read_answer(ids, done.text, done.finish_reason)
    for call in answer.get("tool_calls", []):
        print(f"[tool call] {json.dumps(call['function'], ensure_ascii=False)}")
    return answer


def infer_dataset(engine, cfg: InferConfig, params) -> str:
    """Answer every row of --dataset into --output (.jsonl), each row written and flushed as soon as it is
    finished; rows already in the output are skipped, so an interrupted run continues where it stopped."""
    from ..infer.prompts import read_prompts

    rows = read_prompts(cfg.dataset, cfg.columns, cfg.seed)
    out = Path(cfg.output)
    done = answered_rows(out)
    todo = [row for row in rows if row.key not in done]
    if done and len(todo) == len(rows):  # (keys are the data's paths as given: another directory, other keys)
        raise UserError(f"{out} answers other rows (\"{min(done)}\", ...), none of this run's (\"{rows[0].key}\", "
                        "...); answer them into another --output, or run from the directory the earlier run started "
                        "in, with the same --dataset")
    if done:
        print(f"[wb] {out}: {len(rows) - len(todo)} of {len(rows)} rows already answered, skipped", file=sys.stderr)
    if not todo:
        return str(out)
    encoded = [_encode_row(engine.template, row, cfg.enable_thinking) for row in todo]  # errors before any work
    prompts, images = [ids for ids, _ in encoded], [sources for _, sources in encoded]
    limit = getattr(engine, "max_model_len", None)
    for row, prompt in zip(todo, prompts):
        if limit and len(prompt) >= limit:
            raise UserError(f"{row.key}: the prompt has {len(prompt)} tokens; the model's context is {limit}")
    out.parent.mkdir(parents=True, exist_ok=True)
    _answer_rows(engine, params, todo, prompts, images, out)
    return str(out)


def answered_rows(path: Path) -> set[str]:
    """The rows a previous run wrote; a last line cut short by a crash is removed, once every whole line was read
    as one of ours (a file that is not an output is refused untouched)."""
    if not path.is_file():
        return set()
    data = path.read_bytes()
    whole = data[:data.rfind(b"\n") + 1]
    keys = set()
    for line in whole.split(b"\n"):  # (not splitlines: U+2028 inside a string is no line break)
        if not line.strip():
            continue
        try:
            keys.add(json.loads(line)["row"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise UserError(f"{path}: not an output of `wb infer --dataset` (a line without \"row\"); choose "
                            "another --output") from None
    if len(whole) < len(data):  # a last line without its line break: the write a crash interrupted
        tail = data[len(whole):]
        try:
            keys.add(json.loads(tail)["row"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            if not keys:  # nothing shows it is ours: not touched
                raise UserError(f"{path}: not an output of `wb infer --dataset`; choose another --output") from None
            path.write_bytes(whole)  # cut short: that row is answered again
        else:
            path.write_bytes(data + b"\n")  # whole but for its line break
    return keys


def _encode_row(template, row, enable_thinking: bool | None):
    """A row's prompt ids and images and videos (their pixels are read when the row is submitted)."""
    from ..infer import vision

    try:
        return vision.encode_prompt(template, row.messages, row.tools, images=row.images, videos=row.videos,
                                    base=row.base,
                                    **_thinking(enable_thinking))
    except UserError as e:
        raise UserError(f"{row.key}: {e}") from None


def _row_seed(seed: int, key: str) -> int:
    """A seed per row, the same in a resumed run as in an uninterrupted one."""
    import zlib

    return zlib.crc32(f"{seed}:{key}".encode())


def _answer_rows(engine, params, rows: list, prompts: list[list[int]], images: list[list[str]], out: Path) -> None:
    import queue
    import time
    from dataclasses import replace

    from tqdm import tqdm

    from ..infer import vision

    finished: queue.Queue = queue.Queue()
    ahead = 4 * getattr(engine, "max_batch_size", 32)  # rows submitted before their turn: bounded memory
    pending, order = {}, iter(range(len(rows)))
    written = tokens = 0
    start = time.perf_counter()

    def submit_more():
        while len(pending) < ahead and (i := next(order, None)) is not None:
            try:
                pixels = vision.pixels(engine.template, images[i])
            except UserError as e:
                raise UserError(f"{rows[i].key}: {e}") from None
            request = engine.submit(prompts[i], replace(params, seed=_row_seed(params.seed, rows[i].key)),
                                    images=pixels)
            pending[request] = rows[i]
            request.add_done_callback(finished.put)

    bar = tqdm(total=len(rows), unit="row", desc="wb infer", file=sys.stderr, dynamic_ncols=True)
    try:
        with out.open("a", encoding="utf-8") as f:
            submit_more()
            while pending:
                request = finished.get()
                row = pending.pop(request)
                completions = request.result()
                f.write(json.dumps(result_line(engine.template, row, completions, request.prompt_ids),
                                   ensure_ascii=False) + "\n")
                f.flush()
                written += 1
                tokens += sum(len(c.token_ids) for c in completions)
                bar.update(1)
                bar.set_postfix_str(f"{tokens / (time.perf_counter() - start):.1f} tok/s", refresh=False)
                submit_more()
    except KeyboardInterrupt:
        for request in pending:
            request.cancel()
        bar.close()
        print(f"[wb] interrupted: {written} rows written to {out}; run the same command again to continue",
              file=sys.stderr)
        raise
    bar.close()
    seconds = time.perf_counter() - start
    print(f"[wb] {written} rows answered into {out} in {seconds:.1f} s: {written / seconds:.2f} rows/s, "
          f"{tokens / seconds:.1f} tokens/s", file=sys.stderr)


def result_line(template, row, completions: list, prompt_ids: list[int]) -> dict:
    """One output line: the row's key and prompt, the answer(s), the reference and the row's other columns."""
    line = {"row": row.key, "messages": row.messages}
    if row.images:  # as the row names them, in the order of the <image> markers in messages
        line["images"] = row.images
    if row.videos:
        line["videos"] = row.videos
    if row.tools:
        line["tools"] = row.tools
    answers = [_answer_fields(template, prompt_ids, c) for c in completions]
    if len(answers) == 1:
        line.update(answers[0])
    else:
        line["responses"] = answers
    if row.reference is not None:
        line["reference"] = row.reference.get("content", "")
        if row.reference.get("tool_calls"):
            line["reference_tool_calls"] = row.reference["tool_calls"]
    line["usage"] = {"prompt_tokens": len(prompt_ids),
                     "completion_tokens": sum(len(c.token_ids) for c in completions)}
    for key, value in row.extra.items():
        line.setdefault(key, value)
    return line


def _answer_fields(template, prompt_ids: list[int], completion) -> dict:
    message = template.read_answer(prompt_ids, completion.text, completion.finish_reason)
    fields = {"response": message["content"]}
    for key in ("reasoning", "tool_calls"):
        if message.get(key):
            fields[key] = message[key]
    fields["finish_reason"] = completion.finish_reason
    return fields


def open_vllm_engine(cfg: InferConfig, check: Callable | None = None):
    """The vLLM engine for --infer_backend vllm: base weights from disk, a LoRA checkpoint as a LoRARequest;
    `check(template)` before the model is loaded."""
    from ..models.loader import quiet_libraries
    from ..models.resolve import resolve

    quiet_libraries()  # before transformers imports accelerate (and so DeepSpeed, which would print to stdout)
    ref = resolve(cfg.model, cfg.adapters, cfg.miniature, cfg.hub, cfg.template)
    adapters = {Path(ref.adapters).name: ref.adapters} if ref.adapters else {}
    return vllm_engine(ref, adapters, cfg.trust_remote_code, max_batch_size=cfg.max_batch_size,
                       dtype=cfg.torch_dtype, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                       max_model_len=cfg.vllm_max_model_len, tensor_parallel_size=cfg.vllm_tensor_parallel_size,
                       seed=cfg.seed, check=check)


def vllm_engine(ref, adapters: dict[str, str], trust_remote_code: bool, max_model_len: int | None = None,
                overrides: dict | None = None, check: Callable | None = None, **options):
    """A vLLM engine for a resolved model reference (`wb infer` and `wb deploy`): the base weights from disk, with
    the config attributes its run changed (`overrides`, --rope_scaling: vLLM's hf_overrides), rendered with the
    reference's template, adapters as LoRARequests, the context pinned to --max_model_len or the model's own."""
    from ..infer import vllm as backend
    from ..models.loader import model_config
    from ..models.resolve import base_weights, load_reference_tokenizer, refuse_added_tokens, template_name
    from ..models.rope import apply
    from ..templates import get_template

    for name, path in adapters.items():
        refuse_added_tokens(name, path, "vLLM's vocabulary (the base's) lacks")
    backend.require_vllm()  # a one-line error before anything is downloaded
    if ref.miniature:
        raise UserError("--infer_backend vllm loads model files; a --miniature exists only in memory (use the "
                        "transformers backend, or the base_model directory a miniature run saved)")
    if ref.task == "rm":
        raise UserError(f"{ref.model} is a reward model (`wb rm`): it scores answers with the transformers backend, "
                        "not vLLM")
    tokenizer = load_reference_tokenizer(ref, trust_remote_code)
    template = get_template(template_name(ref, tokenizer), tokenizer)
    if check is not None:  # (before the weights are downloaded)
        check(template)
    weights = base_weights(ref, trust_remote_code)
    overrides = ref.overrides or overrides or {}
    config = apply(model_config(weights, trust_remote_code=trust_remote_code), overrides)
    known = getattr(config.get_text_config(), "max_position_embeddings", None)
    if max_model_len and known and max_model_len > known:
        raise UserError(f"--max_model_len {max_model_len} is longer than the model's context ({known} tokens)")
    return backend.VLLMEngine(weights, tokenizer, template, adapters=adapters, max_model_len=max_model_len or known,
                              trust_remote_code=trust_remote_code, hf_overrides=overrides or None, **options)

"""`wb data preview`: show exactly what a model will be trained on, for every training command's data.

Each task is encoded by the code its training command runs: `template.encode` (sft; pt with the text template),
`data.pairs.pair_rows` (dpo, rm), `data.pairs.kto_row` (kto) and `pipelines.grpo.encode_prompts` (grpo).
"""
from __future__ import annotations

import json
import sys

from ..config import PreviewConfig
from ..data.dataset import DataStats, encode_images, encode_with_media, load_rows, parse_selection
from ..data.images import ImageError, ImageProcessing
from ..data.formats import SHAREGPT_ROLES
from ..errors import UserError
from ..models import load_tokenizer
from ..models.tokens import add_tokens, read_tokens
from ..models.loader import quiet_libraries
from ..templates import IGNORE_INDEX, TemplateError, get_template
from .sft import METHODS, resolve_template_name

_GREEN, _RESET = "\033[32m", "\033[0m"


def _runs(ids: list[int], labels: list[int]) -> list[tuple[list[int], bool]]:
    runs: list[tuple[list[int], bool]] = []
    for tok, lab in zip(ids, labels):
        trained = lab != IGNORE_INDEX
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(tok)
        else:
            runs.append(([tok], trained))
    return runs


def highlight(tokenizer, enc: dict, color: bool, image_pad: int | None = None, video_pad: int | None = None) -> str:
    """The encoded text with trained spans in green (terminal) or between ⟦ ⟧ (elsewhere); each image's run of
    `image_pad` tokens shown as one marked span with its source and token count, each run of a video's
    `video_pad` tokens likewise (Qwen3-VL: one run per temporal patch, after its timestamp)."""
    import itertools
    import math

    images = iter(zip(enc.get("images", ()), enc.get("image_grid", ())))
    videos, grids = enc.get("videos", []), enc.get("video_grid", [])
    k, left = -1, 0  # the video being shown, and how many of its tokens are still to come
    kind = {image_pad: "image", video_pad: "video"}
    out = []
    for ids, trained in _runs(enc["input_ids"], enc["labels"]):
        pieces = []
        for what, group in itertools.groupby(ids, key=lambda t: kind.get(t) if t is not None else None):
            group = list(group)
            if what == "image":
                src, grid = next(images, ("?", ()))
                pieces.append(f"⟪image {_name(src)}: {len(group)} tokens, grid {'x'.join(map(str, grid))}⟫")
            elif what == "video":
                if left <= 0:
                    k += 1
                    left = math.prod(grids[k]) // 4 if k < len(grids) else len(group)  # (merge 2 x 2)
                left -= len(group)
                pieces.append(f"⟪video {_name(videos[k]) if k < len(videos) else '?'}: {len(group)} tokens⟫")
            else:
                pieces.append(tokenizer.decode(group))
        text = "".join(pieces)
        out.append((f"{_GREEN}{text}{_RESET}" if color else f"⟦{text}⟧") if trained else text)
    return "".join(out)


def _name(src) -> str:
    from pathlib import Path

    if isinstance(src, list):
        return f"{Path(src[0]).name}... ({len(src)} frames)"
    return Path(src).name if not src.startswith("data:") else "data URI"


# -- which command's data ------------------------------------------------------------------------
_REGISTRY_TASKS = {"sft": "sft", "preference": "dpo", "kto": "kto", "grpo": "grpo"}
_ANSWER_ROLES = {speaker for speaker, role in SHAREGPT_ROLES.items() if role == "assistant"}  # roles that answer


def _looks_like(row: dict) -> tuple[str, str]:
    """(task, why) for one raw row: the rules of `--task auto`."""
    keys = set(row)
    if keys & {"chosen", "rejected", "rejected_response", "chosen_messages", "rejected_messages"}:
        return "dpo", "chosen/rejected columns"
    if keys & {"label", "kto_tag"}:
        return "kto", "a label column"
    if "text" in keys and not keys & {"messages", "conversations", "instruction", "query", "prompt"}:
        return "pt", "a text column only"
    turns = row.get("messages", row.get("conversations"))
    if isinstance(turns, list) and turns and all(isinstance(t, dict) for t in turns) and not any(
            t.get("role", t.get("from")) in _ANSWER_ROLES for t in turns):
        return "grpo", "conversations without an assistant answer"
    if "prompt" in keys and not keys & {"completion", "response", "output"}:
        return "grpo", "a prompt without an answer"
    return "sft", "conversations with answers"


def infer_task(specs: list[str], columns: dict | None = None) -> tuple[str, str]:
    """(task, why) from the first row of every source (a named dataset says its task); an error when sources
    disagree."""
    from pathlib import Path

    from ..data.files import read_rows
    from ..data.registry import lookup

    found: dict[str, tuple[str, str]] = {}
    for spec in specs:
        path = parse_selection(spec)[0]
        local = Path(path).exists() or "::" in path
        meta = None if local else lookup(path)  # a file wins over a dataset name, as when training
        if meta is None and not local:
            continue  # not found: loading the rows says so
        if meta is not None:
            found[path] = (_REGISTRY_TASKS.get(meta.task, "sft"), f"the named dataset {meta.name} is {meta.task} data")
            continue
        mapping = columns or {}
        first = next((row for _, row in read_rows(path, streaming=True) if isinstance(row, dict)), None)
        if first is not None:
            found[path] = _looks_like({mapping.get(k, k): v for k, v in first.items()})
    tasks = {task for task, _ in found.values()}
    if len(tasks) > 1:
        seen = ", ".join(f"{path}: {task}" for path, (task, _) in found.items())
        raise UserError(f"the --dataset sources look like data of different commands ({seen}); choose one with --task")
    return next(iter(found.values()), ("sft", "no rows to look at"))


# -- one row of each task ------------------------------------------------------------------------
def _trained(labels: list[int]) -> int:
    return sum(1 for x in labels if x != IGNORE_INDEX)


def _first_trained(labels: list[int]) -> int:
    return next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), len(labels))


def _shared_prompt(c: dict, r: dict) -> int:
    """Tokens the chosen and rejected sequences share before either is trained: the prompt, shown once."""
    n = 0
    limit = min(len(c["input_ids"]), len(r["input_ids"]), _first_trained(c["labels"]), _first_trained(r["labels"]))
    while n < limit and c["input_ids"][n] == r["input_ids"][n]:
        n += 1
    return n


def _reward_columns(row: dict) -> dict:
    """The columns GRPO's reward functions receive by name beside completions and prompts (GRPOTrainer._score):
    every column but the prompt messages."""
    return {k: v for k, v in row.items() if k not in ("messages", "prompt_ids")}


def _part(ids: list[int], labels: list[int]) -> dict:
    return {"input_ids": ids, "labels": labels}


def _encode(task: str, template, row: dict, cfg: PreviewConfig) -> dict:
    """The JSON object of one row (see docs/data.md, "Previewing")."""
    if task in ("sft", "pt"):
        enc = encode_with_media(template, [row])[0]
        media = {k: enc[k] for k in ("images", "image_grid", "videos", "video_grid") if k in enc}
        return {**_part(enc["input_ids"], enc["labels"]), **media}
    if task == "kto":
        from ..data.pairs import kto_row

        enc = encode_images(template, row, template.encode(kto_row(row)))
        images = {k: enc[k] for k in ("images", "image_grid") if k in enc}
        return {"label": row["label"], **_part(enc["input_ids"], enc["labels"]), **images}
    if task in ("dpo", "rm"):
        from ..data.pairs import pair_rows

        c, r = (encode_images(template, row, e) for e in template.encode_batch(list(pair_rows(row))))
        n = _shared_prompt(c, r)
        out = {"prompt_ids": c["input_ids"][:n], "chosen": _part(c["input_ids"], c["labels"]),
               "rejected": _part(r["input_ids"], r["labels"]),
               **{k: c[k] for k in ("images", "image_grid") if k in c}}
        return {**out, "margin": row["margin"]} if "margin" in row else out
    from .grpo import encode_prompts

    prompt = encode_prompts([row], template, sys.maxsize, DataStats(), cfg.enable_thinking)[0]
    return {"prompt_ids": prompt["prompt_ids"], "columns": _reward_columns(row)}


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)  # dataset cells may be dates, decimals, ...


def _last_token_only(ids: list[int]) -> list[int]:
    return [IGNORE_INDEX] * (len(ids) - 1) + ids[-1:]


def _show(task: str, template, enc: dict, color: bool, head: str) -> str:
    """A row as text: a header line, then the rendered tokens with the trained ones highlighted."""
    tokenizer = template.tokenizer
    mark = "green" if color else "⟦ ⟧"
    if task in ("sft", "pt", "kto"):
        label = f"label {str(enc['label']).lower()} ({'desirable' if enc['label'] else 'undesirable'}) · " \
            if task == "kto" else ""
        media = "".join(f", {len(enc[k])} {k[:-1]}(s) ⟪ ⟫" for k in ("images", "videos") if enc.get(k))
        pads = (template.image_token_ids[0], template.video_token_id) if media else ()
        return (f"{head} · {label}{len(enc['input_ids'])} tokens{media}, {_trained(enc['labels'])} trained "
                f"({mark})\n" + highlight(tokenizer, enc, color, *pads))
    if task == "grpo":
        columns = ", ".join(f"{k}={_dumps(v)}" for k, v in enc["columns"].items())
        return (f"{head} · prompt {len(enc['prompt_ids'])} tokens, up to the generation prompt (completions are "
                f"sampled after it)\n{tokenizer.decode(enc['prompt_ids'])}\n"
                f"[reward functions also receive: {columns or 'no other columns'}]")
    n = len(enc["prompt_ids"])
    sides = []
    for side in ("chosen", "rejected"):
        ids, labels = enc[side]["input_ids"], enc[side]["labels"]
        shown = _last_token_only(ids) if task == "rm" else labels
        sides.append((side, {"input_ids": ids[n:], "labels": shown[n:]}, len(ids), _trained(labels)))
    if task == "rm":
        sizes = " · ".join(f"{side} {length} tokens" for side, _, length, _ in sides)
        what = f"the reward head reads the last token of each, {mark}"
    else:
        sizes = " · ".join(f"{side} {length} tokens, {t} trained" for side, _, length, t in sides)
        what = mark
    margin = f" · margin {enc['margin']}" if "margin" in enc else ""
    images = f", {len(enc['images'])} image(s) ⟪ ⟫" if enc.get("images") else ""
    prompt = {"input_ids": enc["prompt_ids"], "labels": [IGNORE_INDEX] * n,
              **{k: enc[k] for k in ("images", "image_grid") if k in enc}}
    lines = [f"{head} · {sizes} with the prompt{margin} ({what})", f"[prompt: {n} tokens{images}, in both]",
             highlight(tokenizer, prompt, color, template.image_token_ids[0] if images else None)]
    for side, part, _, _ in sides:
        lines += [f"[{side}]", highlight(tokenizer, part, color)]
    return "\n".join(lines)


def _image_processing(cfg: PreviewConfig) -> ImageProcessing:
    """A registered model's image processor from the registry (offline), else its preprocessor_config.json."""
    from ..models.loader import config_dir
    from ..registry import find_model

    meta = find_model(cfg.model)
    if meta is not None and meta.processor:
        return ImageProcessing(dict(meta.processor), cfg.min_pixels, cfg.max_pixels,
                               dict(meta.video_processor) or None, cfg.video_fps, cfg.video_max_pixels)
    return ImageProcessing.from_dir(config_dir(cfg.model, cfg.hub, miniature=cfg.miniature), cfg.min_pixels,
                                    cfg.max_pixels, video_fps=cfg.video_fps, video_max_pixels=cfg.video_max_pixels)


def run_preview(cfg: PreviewConfig, stream=None) -> None:
    stream = stream or sys.stdout
    quiet_libraries()
    task, why = infer_task(cfg.dataset, cfg.columns) if cfg.task == "auto" else (cfg.task, "")
    tokenizer = load_tokenizer(cfg.model, cfg.hub, cfg.trust_remote_code, miniature=cfg.miniature)
    if cfg.new_special_tokens:  # as the training run will add them (never split)
        add_tokens(tokenizer, read_tokens(cfg.new_special_tokens))
    if task == "pt":  # as wb pt: plain text, every token trained
        from ..templates.text import TextTemplate

        template = TextTemplate(tokenizer)
    else:  # wb grpo renders prompts with the template's defaults (it takes no --loss_scope)
        template = get_template(resolve_template_name(cfg, tokenizer), tokenizer,
                                "assistant" if task == "grpo" else cfg.loss_scope)
    if template.vision is not None:  # images become as many tokens as the model's processor makes of them
        template.image_processing = _image_processing(cfg)
    sources: list[str] = []
    rows = load_rows(cfg.dataset, sources, columns=cfg.columns, names=cfg.data_names(),
                     task="grpo" if task == "grpo" else METHODS[task].rows)[: cfg.n]
    if why:  # on stderr: --json output stays one object per line
        print(f"[wb] preview: {task} data ({why}); choose another with --task", file=sys.stderr)
    color = stream.isatty()
    for where, row in zip(sources, rows):
        try:
            enc = _encode(task, template, row, cfg)
        except (TemplateError, ImageError) as e:  # the one-line error training gives for the row
            raise UserError(f"{where}: {e}") from None
        if cfg.json:
            stream.write(_dumps({"source": where, "task": task, **enc}) + "\n")
            continue
        head = f"── {where} · template {template.name} · {task}"
        stream.write(_show(task, template, enc, color, head) + "\n\n")

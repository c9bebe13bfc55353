"""The registry as a Markdown table (docs/models.md is generated from it)."""
from __future__ import annotations

from .core import models


def models_markdown() -> str:
    from ..templates import TEMPLATES

    lines = ["# Registered models", "",
             "Generated from the registry by `python scripts/gen_models_doc.py`; a test fails when it is stale.",
             "Any other model works with `--template NAME` (see `wb models`), or through its own chat template.", "",
             "| model id | ModelScope id | family | model type | architecture | template | requires | miniature |",
             "|---|---|---|---|---|---|---|---|"]
    for m in models():
        ms = m.modelscope_id if m.modelscope_id and m.modelscope_id.lower() != m.model_id.lower() else ""
        lines.append(f"| {m.model_id} | {ms} | {m.family} | {m.model_type} | {m.architecture} | `{m.template}` | "
                     f"{', '.join(m.requires)} | {m.miniature_kind} |")
    lines += ["", "## Miniatures", "",
              "`--miniature` builds a registered id offline from the real config's facts kept in the registry "
              "(2 layers, 64 wide; the same architecture class and structural options) with a bundled tokenizer:",
              "**own tokenizer**: the model's real vocabulary, added tokens and ids (Qwen's byte-level BPE); "
              "**stand-in tokenizer**: GPT-2's byte-level BPE with the family's special tokens and chat template, "
              "announced at start-up (the family's own vocabulary is not bundled, so ordinary text gets other ids "
              "than in the real model); **none**: no miniature, for the reason below.", ""]
    said: dict[str, list[str]] = {}
    for m in models():
        if m.miniature_note or m.no_miniature:
            said.setdefault(m.no_miniature or m.miniature_note, []).append(m.model_id)
    lines += [f"- {', '.join(ids)}: {text}." for text, ids in said.items()]
    lines += ["", "## Templates", "", "| template | description | stop words |", "|---|---|---|"]
    for name, spec in TEMPLATES.items():
        lines.append(f"| `{name}` | {spec.description} | {' '.join(f'`{w}`' for w in spec.stop_words)} |")
    return "\n".join(lines) + "\n"

"""The registry as a Markdown table (docs/models.md is generated from it)."""
from __future__ import annotations

from .core import models


def models_markdown() -> str:
    from ..templates import TEMPLATES

    lines = ["# Registered models", "",
             "Generated from the registry by `python scripts/gen_models_doc.py`; a test fails when it is stale.",
             "Any other model works with `--template NAME` (see `wb models`), or through its own chat template.", "",
             "| model id | ModelScope id | family | model type | architecture | template | requires |",
             "|---|---|---|---|---|---|---|"]
    for m in models():
        ms = m.modelscope_id if m.modelscope_id and m.modelscope_id.lower() != m.model_id.lower() else ""
        lines.append(f"| {m.model_id} | {ms} | {m.family} | {m.model_type} | {m.architecture} | `{m.template}` | "
                     f"{', '.join(m.requires)} |")
    lines += ["", "## Templates", "", "| template | description | stop words |", "|---|---|---|"]
    for name, spec in TEMPLATES.items():
        lines.append(f"| `{name}` | {spec.description} | {' '.join(f'`{w}`' for w in spec.stop_words)} |")
    return "\n".join(lines) + "\n"

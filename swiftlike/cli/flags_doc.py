"""docs/flags.md: every flag of every command, from the same option declarations `--help` is made of
(`python scripts/gen_flags_doc.py` writes it; a test fails when it is stale)."""
from __future__ import annotations

from ..config import PreviewConfig, options
from .main import COMMANDS, CONFIG_HELP, default_of


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(cls) -> list[str]:
    rows = ["| flag | default | meaning |", "|---|---|---|", f"| `--config` | | {_cell(CONFIG_HELP)} |"]
    for f in options(cls):
        default = default_of(f)
        choices = f.metadata.get("choices")
        meaning = f.metadata.get("help", "") + (f" One of: {', '.join(map(str, choices))}." if choices else "")
        rows.append(f"| `--{f.name}` | {'' if default is None else f'`{_cell(default)}`'} | {_cell(meaning)} |")
    return rows


def flags_markdown() -> str:
    lines = ["# Flags", "",
             "Every flag of every command, as `wb COMMAND --help` gives it (generated from the option declarations by",
             "`python scripts/gen_flags_doc.py`; a test fails when it is stale). Each is also a key of a `--config`",
             "recipe. What the commands do: [cli.md](cli.md) and the topic pages it links.", ""]
    commands = [(name, cls, text) for name, (cls, text) in COMMANDS.items()]
    commands.append(("data preview", PreviewConfig, "Show rendered rows with the trained spans highlighted."))
    lines += [f"- [`wb {name}`](#wb-{name.replace(' ', '-')})" for name, _, _ in commands] + [""]
    for name, cls, text in commands:
        lines += [f"## wb {name}", "", text, "", *_table(cls), ""]
    return "\n".join(lines)

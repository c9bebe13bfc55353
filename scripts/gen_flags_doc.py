"""Regenerate docs/flags.md from the option declarations: python scripts/gen_flags_doc.py"""
from pathlib import Path

from swiftlike.cli.flags_doc import flags_markdown

if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "docs" / "flags.md"
    out.write_text(flags_markdown(), encoding="utf-8")
    print(f"wrote {out}")

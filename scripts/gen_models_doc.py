"""Regenerate docs/models.md from the model registry: python scripts/gen_models_doc.py"""
from pathlib import Path

from swiftlike.registry.table import models_markdown

if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "docs" / "models.md"
    out.write_text(models_markdown(), encoding="utf-8")
    print(f"wrote {out}")

"""Data layer: read files, normalize rows to the canonical format, encode with a template, batch."""

"""Pipelines: one function per command, composing config -> models/templates/data -> train/infer."""

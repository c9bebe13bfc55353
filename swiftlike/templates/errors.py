"""Errors a chat template raises for conversations it does not accept (same messages as the official Jinja)."""
from ..errors import UserError


class TemplateError(UserError):
    """The official template rejects this conversation (e.g. a system message where none is supported)."""

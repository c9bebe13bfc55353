"""Command-line interface (`wb`)."""

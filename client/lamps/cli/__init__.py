"""The `lamps` command."""

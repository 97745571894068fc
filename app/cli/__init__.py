"""The `routines` command."""

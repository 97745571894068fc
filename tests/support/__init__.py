"""Helpers the tests share: git, recorders, clocks, secrets. Tests import them as `tests.support.<module>`."""

"""Routines: a self-hosted GitHub App that runs repo-bound AI coding routines."""

"""Where the tests' fixed inputs are: the repository root, GitHub payloads, the shipped routines."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAYLOADS = ROOT / "tests" / "payloads"
EXAMPLE_ROUTINES = ROOT / "routines"

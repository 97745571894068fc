"""`python -m app` is the `routines` command (app.cli.main)."""

from app.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Git with libgit2 only: per-repository `mirrors`, per-run `checkouts` (with spare work trees), the
run's `workspace` (commits, checkpoints, pushes) and where its parts live (`layout`), remotes and
credentials (`remotes`), and the import of snapshots staged in the sandbox (`snapshots`).
"""

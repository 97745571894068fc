"""Git with libgit2 only: per-repository mirrors and per-run checkouts (`workspace`), the fast tree
writer (`worktree`), remotes and credentials (`remotes`), and the import of snapshots staged in the
sandbox (`snapshots`).
"""

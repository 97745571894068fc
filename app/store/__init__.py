"""Redis adapters: runs and event streams (`runs`), leases (`leases`), routine states (`routine_states`),
daily quotas (`quotas`), concurrency groups (`groups`), cancel flags (`cancels`), the vault (`vault`),
the arq queue (`queue`) and the embedded server (`embedded`).
"""

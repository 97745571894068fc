"""Redis adapters: runs and event streams (`runs`), leases (`leases`), admission — pause, quotas,
concurrency groups, cancel flags (`admission`), the vault (`vault`), the arq queue (`queue`) and
the embedded server (`embedded`).
"""

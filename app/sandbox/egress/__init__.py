"""The network boundary of a run: the proxy (`proxy`, `http`, `relay`), its policy and address checks
(`policy`), and the run's CA for intercepted hosts (`ca`).
"""

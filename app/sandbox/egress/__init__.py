"""The network boundary of a run: the proxy (`proxy`, `http`, `relay`, `splice`, `idle`), its bounded
event log (`ledger`), its policy and address checks (`policy`), the run's CA for intercepted hosts
(`ca`), and the sandbox's end of the way out (`forwarder`, which runs inside the sandbox).
"""

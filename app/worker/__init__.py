"""The worker process: arq settings and its jobs (run, fire a schedule slot, handle a delivery, reaper,
sweeps).
"""

"""The domain's plain data (`domain`), every seam (`ports`), the one exception tree (`errors`), the
settings (`config`, the only reader of the environment) and the redaction of secrets (`redact`).
Imports nothing else of `app`.
"""

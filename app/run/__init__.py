"""One run, end to end: the named phases (`runner`), what they share (`context`), resuming after a
worker died (`resume`), and the end of a run: draft PR, review, report, notifications (`finish`,
`outputs`, `notify`).
"""

"""Checks: rows + a clock → decisions (expiry, assertions, probes).

Pure where possible (docs/architecture.md rule 7): ``expiry`` is a function of value
objects and an instant, tested table-driven and with hypothesis.
"""

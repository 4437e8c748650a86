"""Benchmarks for lark-token-actors: ``python benchmarks/run.py`` or ``just bench``.

Never part of the tests (``tests/test_benchmarks.py`` only smoke-runs them). Every scenario
compares systems side by side in one run, against the same fake Feishu server, and reports
ratios rather than absolute times.
"""

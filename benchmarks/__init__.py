"""Benchmarks for lark-token-actors (issue 5): ``python benchmarks/run.py`` or ``just bench``.

Never part of the unit tests. Every scenario compares systems side by side against the same
loopback fake Feishu server in the same process run and reports ratios, not absolute times.
"""

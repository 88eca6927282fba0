"""Benchmarks: they print numbers, they are not tests, and nothing in :mod:`harness` imports them.

``python -m bench.trial`` (trial speed against an HF ``Trainer`` reference, ``--profile``: where a step's
time goes), ``bench.sweep`` (sweep cost, replayed on a real grid), ``bench.overhead`` (harness overhead per
trial), ``bench.report`` (report time).
"""

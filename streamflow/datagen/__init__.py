"""Deterministic generator of snapshot data in the format of the table registry (streamflow/schema.py).

Use ``streamflow.datagen.generate.generate`` from Python, or the command line:
``python -m streamflow.datagen.generate --users 7043 --out data``.
"""

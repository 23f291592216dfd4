"""Batch side of the pipeline: validate snapshot CSVs against the registry, load them into PostgreSQL.

- ``streamflow.batch.validate``: one CSV -> typed DataFrame, or a ``DataValidationError``
  naming the file, line and column of each problem.
- ``streamflow.batch.load``: a snapshot folder -> the warehouse's base and snapshot tables,
  in one transaction (``python -m streamflow.batch.load data/month_000 data/month_001``).
"""

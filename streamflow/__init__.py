"""StreamFlow: a real-time feature pipeline for churn prediction (shared core)."""

from streamflow import feast_metrics_guard, feast_without_typeguard

__version__ = "0.1.0"

feast_without_typeguard.install()  # before anything imports Feast (see the module)
feast_metrics_guard.install()  # (see the module)

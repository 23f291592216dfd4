"""StreamFlow: a real-time feature pipeline for churn prediction (shared core)."""

__version__ = "0.1.0"

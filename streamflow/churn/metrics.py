"""How a churn model is judged: ROC AUC (the promotion criterion), PR AUC, log loss and Brier score."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

METRICS = ("roc_auc", "pr_auc", "log_loss", "brier")
"""In report order. Higher is better for the AUCs, lower for log loss and Brier."""


def scores(labels, probabilities) -> dict[str, float]:
    """Every metric of :data:`METRICS` for these labels (0/1) and predicted churn probabilities."""
    y = np.asarray(labels, dtype=int)
    p = np.clip(np.asarray(probabilities, dtype=float), 1e-15, 1 - 1e-15)
    if len(np.unique(y)) < 2:
        raise ValueError("the validation labels hold one class only: no AUC can be computed")
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
    }

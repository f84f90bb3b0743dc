"""Binary classification metrics from labels and predicted probabilities (scikit-learn does the arithmetic)."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def classification_metrics(labels: np.ndarray, probs: np.ndarray, loss: float) -> dict[str, float]:
    predictions = (probs >= 0.5).astype(int)
    labels = labels.astype(int)
    both_classes = len(np.unique(labels)) == 2
    return {
        "accuracy": float(skm.accuracy_score(labels, predictions)),
        "f1": float(skm.f1_score(labels, predictions, zero_division=0)),
        "precision": float(skm.precision_score(labels, predictions, zero_division=0)),
        "recall": float(skm.recall_score(labels, predictions, zero_division=0)),
        # ROC AUC is undefined on a single class; NaN says so rather than a made-up number.
        "roc_auc": float(skm.roc_auc_score(labels, probs)) if both_classes else float("nan"),
        "loss": float(loss),
        "n": int(len(labels)),
    }

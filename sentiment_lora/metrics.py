"""Binary classification metrics from labels and predicted probabilities (scikit-learn does the arithmetic)."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

# A test set whose larger class holds at least this share makes accuracy a weak guide: always predicting that
# class scores as much. The run then says so (log and metrics.json `warnings`).
WEAK_ACCURACY_MAJORITY = 0.7


def classification_metrics(labels: np.ndarray, probs: np.ndarray, loss: float) -> dict[str, float]:
    """Accuracy, F1 of the positive class, precision, recall, ROC AUC and loss; and, for imbalanced sets, what
    always predicting the larger class scores (`majority_accuracy`), balanced accuracy (the mean of the recalls of
    both classes) and the F1 of the smaller class (`f1_minority`, of `minority_class`; on a tie, the positive
    class, whose F1 `f1` is)."""
    predictions = (probs >= 0.5).astype(int)
    labels = labels.astype(int)
    both_classes = len(np.unique(labels)) == 2
    counts = np.bincount(labels, minlength=2)
    minority = 0 if counts[0] < counts[1] else 1
    return {
        "accuracy": float(skm.accuracy_score(labels, predictions)),
        "f1": float(skm.f1_score(labels, predictions, zero_division=0)),
        "precision": float(skm.precision_score(labels, predictions, zero_division=0)),
        "recall": float(skm.recall_score(labels, predictions, zero_division=0)),
        # ROC AUC is undefined on a single class; NaN says so rather than a made-up number.
        "roc_auc": float(skm.roc_auc_score(labels, probs)) if both_classes else float("nan"),
        "loss": float(loss),
        "n": int(len(labels)),
        "majority_accuracy": float(counts.max() / len(labels)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, predictions)) if both_classes else float("nan"),
        "f1_minority": float(skm.f1_score(labels, predictions, pos_label=minority, zero_division=0)),
        "minority_class": minority,
    }


def imbalance_warning(name: str, metrics: dict) -> str | None:
    """A line saying that accuracy is a weak guide on this set, when its larger class holds
    WEAK_ACCURACY_MAJORITY of it or more; else None."""
    majority = metrics["majority_accuracy"]
    if majority < WEAK_ACCURACY_MAJORITY:
        return None
    larger = "negative" if metrics["minority_class"] == 1 else "positive"
    return (
        f"{name} set: {majority:.0%} of its {metrics['n']} reviews are {larger}, so always predicting {larger} "
        f"scores accuracy {majority:.4f}; accuracy is a weak guide here: read balanced_accuracy "
        f"({metrics['balanced_accuracy']:.4f}) and f1_minority ({metrics['f1_minority']:.4f})"
    )


def one_class_warning(name: str, probs: np.ndarray, metrics: dict) -> str | None:
    """A line saying that the model predicts one class for every review of the set, where it does; else None. Such a
    run completes and its accuracy is the class's share, so a table would list it as if it had learned something."""
    predicted = set((np.asarray(probs) >= 0.5).astype(int).tolist())
    if len(predicted) != 1 or np.isnan(metrics["roc_auc"]):  # a set of one class may rightly get one prediction
        return None
    label = "positive" if predicted.pop() == 1 else "negative"
    return (
        f"{name} set: the model predicts {label} for all {metrics['n']} reviews (accuracy {metrics['accuracy']:.4f}, "
        f"ROC AUC {metrics['roc_auc']:.4f}): it learned no decision at 0.5; a smaller lr (optimizer.lr or "
        f"method.lr_scale) or more epochs may help"
    )

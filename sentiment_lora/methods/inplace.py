"""Helpers for methods that train encoder tensors in place (no PEFT wrapper): which encoder parameters the
classifier's forward uses, which are bias terms, and freezing all but a chosen set."""

from __future__ import annotations

import torch

from sentiment_lora.model import SentimentClassifier


def used_encoder_parameters(classifier: SentimentClassifier) -> set[str]:
    """Names of the encoder's parameters that the classifier's forward uses (they receive a gradient).

    Poolers (BERT's pooler.dense, ALBERT's pooler, ...) and Longformer's *_global projections (used only with a
    global attention mask) take no part in the classifier's forward: training them changes nothing, and counting
    them as trainable would overstate a method's size. One backward pass on a few tokens in eval mode (no dropout,
    so no random draw) finds them in every family; a name list could not.
    """
    flags = {name: p.requires_grad for name, p in classifier.named_parameters()}
    training = classifier.training
    classifier.eval()
    for parameter in classifier.parameters():
        parameter.requires_grad_(True)
    ids = torch.tensor([[2, 5, 6, 7, 3]])  # any few in-vocabulary tokens: only which parameters are reached matters
    try:
        classifier(ids, torch.ones_like(ids)).sum().backward()
        used = {name for name, p in classifier.encoder.named_parameters() if p.grad is not None}
    finally:
        for name, parameter in classifier.named_parameters():
            parameter.grad = None
            parameter.requires_grad_(flags[name])
        classifier.train(training)
    return used


def is_bias(name: str) -> bool:
    # DeBERTa v1 keeps its q and v biases as parameters q_bias and v_bias, not as a Linear's `bias`.
    last = name.rsplit(".", 1)[-1]
    return last == "bias" or last.endswith("_bias")


def train_only(classifier: SentimentClassifier, encoder_names: set[str]) -> SentimentClassifier:
    """Freeze the encoder except `encoder_names`; the head trains whole."""
    for name, parameter in classifier.encoder.named_parameters():
        parameter.requires_grad_(name in encoder_names)
    for parameter in classifier.head.parameters():
        parameter.requires_grad_(True)
    return classifier

"""Torch helpers for the factory's training stages: encoding, the training loop, batched generation."""

from controller.factory.training.generate import generate_answers
from controller.factory.training.loop import KDParams, TrainReport, evaluate_loss, train_causal_lm
from controller.factory.training.params import TrainParams, resolve_device

__all__ = [
    "KDParams",
    "TrainParams",
    "TrainReport",
    "evaluate_loss",
    "generate_answers",
    "resolve_device",
    "train_causal_lm",
]

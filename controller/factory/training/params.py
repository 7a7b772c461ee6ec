"""Hyperparameters shared by the training stages (flat fields, so recipes stay short)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from controller.factory.stage import Resources, StageConfig


class TrainParams(StageConfig):
    """Supervised training settings. ``max_steps`` (optimizer steps) wins over ``epochs`` when set."""

    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (AdamW)")
    epochs: float = Field(3.0, gt=0, description="passes over the training data (when max_steps is not set)")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; wins over epochs")
    batch_size: int = Field(8, gt=0, description="examples per forward pass")
    grad_accum: int = Field(1, gt=0, description="forward passes per optimizer step")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of the steps the learning rate warms up")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warmup")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    max_seq_len: int = Field(512, gt=8, description="prompt + answer tokens per example; longer ones are cut")
    gradient_checkpointing: bool = Field(False, description="recompute activations: less memory, slower")
    eval_every: int = Field(0, ge=0, description="validation loss every N steps (0: only at the end)")
    max_eval_examples: int = Field(256, gt=0, description="validation examples the loss is measured on")
    log_every: int = Field(10, gt=0, description="progress (step, loss) every N steps")
    seed: int = Field(0, description="random seed (initialisation, data order)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
    num_threads: int = Field(
        0,
        ge=0,
        description="CPU threads for torch; 0: chosen at the start of the stage as the cores this process may use "
        "(affinity, cgroup quota) divided by the jobs running at once, at most the cores the machine's load leaves "
        "idle (see controller/factory/training/threads.py)",
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="autocast dtype on cuda")

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if self.mixed_precision != "no" and self.device == "cpu":
            raise ValueError("mixed_precision needs device cuda (or auto on a GPU machine)")
        return self


def training_resources(params: TrainParams, memory_mb: int, gpu: bool = False) -> Resources:
    """A training run's needs: a GPU when ``device: cuda`` (or ``gpu``), the CPU threads it asks for."""
    gpus = 1.0 if gpu or params.device == "cuda" else 0.0
    return Resources(num_cpus=float(params.num_threads or 2), num_gpus=gpus, memory_mb=memory_mb)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device

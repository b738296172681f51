"""Per-step classifiers over stored descriptors: the fine-tuned image-audio (or R(2+1)D) head the baselines average."""
from __future__ import annotations

from torch import nn


class StepClassifier(nn.Module):
    """A linear classifier over one step's descriptor (BN then FC: the student's final layer, fine-tuned)."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm1d(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
        self.in_dim, self.num_classes = in_dim, num_classes

    def forward(self, z):
        return self.net(z)

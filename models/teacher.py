"""The clip-level teacher Omega: torchvision's R(2+1)D-18, returning its 512-d descriptor and class logits."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.video import r2plus1d_18

# Kinetics-400 normalisation used by torchvision's video models
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
from models.widths import DESCRIPTOR_DIM  # noqa: F401 - re-exported beside the module


class R2Plus1DTeacher(nn.Module):
    """R(2+1)D-18 over 16-frame 112x112 clips. ``forward`` takes uint8 clips (B, 16, H, W, 3)."""

    descriptor_dim = DESCRIPTOR_DIM

    def __init__(self, num_classes: int = 400):
        super().__init__()
        net = r2plus1d_18(weights=None, num_classes=num_classes)
        self.trunk = nn.Sequential(net.stem, net.layer1, net.layer2, net.layer3, net.layer4, net.avgpool)
        self.fc = net.fc
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1), persistent=False)

    def preprocess(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> normalised float (B, 3, T, H, W)."""
        x = clips.permute(0, 4, 1, 2, 3).float().div_(255)
        return (x - self.mean) / self.std

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (descriptor z^V (B, 512), logits (B, C))."""
        x = self.preprocess(clips) if clips.dtype == torch.uint8 else clips
        z = self.trunk(x).flatten(1)
        return z, self.fc(z)

    def load_torchvision_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict in torchvision's ``r2plus1d_18`` key layout (stem.*, layer1.* ..., fc.*)."""
        mapping = {"stem": "trunk.0", "layer1": "trunk.1", "layer2": "trunk.2", "layer3": "trunk.3",
                   "layer4": "trunk.4"}
        renamed = {}
        for k, v in state.items():
            head, _, rest = k.partition(".")
            renamed[f"{mapping[head]}.{rest}" if head in mapping else k] = v
        self.load_state_dict(renamed)


def r2plus1d_teacher(num_classes: int = 400) -> R2Plus1DTeacher:
    """Build the R(2+1)D-18 teacher (randomly initialised; weights are loaded by the caller)."""
    return R2Plus1DTeacher(num_classes=num_classes)

"""The ImgAud2Vid student Phi (Listen to Look §3.2, supp. C): image ResNet-18 + audio ResNet-18 + fusion Psi."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
from models.widths import AUDIO_DIM, FUSED_DIM, IMAGE_DIM  # noqa: F401 - re-exported beside the modules


class ImageNet(nn.Module):
    """Image stream: ResNet-18 on the step's first 112x112 RGB frame -> z^I (256-d)."""

    def __init__(self, out_dim: int = IMAGE_DIM):
        super().__init__()
        self.trunk = resnet18(weights=None)
        self.trunk.fc = nn.Identity()
        self.proj = nn.Linear(512, out_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W)."""
        x = frames.permute(0, 3, 1, 2).float().div_(255)
        return (x - self.mean) / self.std

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(frames) if frames.dtype == torch.uint8 else frames
        return self.proj(self.trunk(x))

    def global_map(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(e^G, z^I) in one pass of the trunk: AVGN's global feature map e^G (the trunk's layer4 output, channels
        last: (B, H_G, W_G, D_G) = (B, 4, 4, 512) on 112x112 frames) and the image descriptor z^I = proj(mean of
        e^G over its H_G x W_G cells), equal to :meth:`forward` (the trunk's average pooling is that mean)."""
        t = self.trunk
        x = self.preprocess(frames) if frames.dtype == torch.uint8 else frames
        x = t.maxpool(t.relu(t.bn1(t.conv1(x))))
        e_g = t.layer4(t.layer3(t.layer2(t.layer1(x))))              # (B, D_G, H_G, W_G)
        z_i = self.proj(torch.flatten(t.avgpool(e_g), 1))
        return e_g.permute(0, 2, 3, 1), z_i


def audio_trunk_state(image_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An RGB ResNet-18 state dict (torchvision keys) for :class:`AudioNet`'s trunk: conv1 averaged over the three
    colour channels into one, the other layers as they are (the paper starts its audio stream from ImageNet)."""
    index = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    out = {}
    for key, value in image_state.items():
        head, _, rest = key.partition(".")
        if head in index:
            out[f"{index[head]}.{rest}"] = value.mean(1, keepdim=True) if head == "conv1" else value
    return out


class AudioNet(nn.Module):
    """Audio stream: ResNet-18 with a 1-channel first conv on the 40x101 log-mel -> z^A (256-d).

    As in the paper the final average pooling runs over time only; the remaining frequency bins are flattened.
    """

    def __init__(self, out_dim: int = AUDIO_DIM, freq_bins: int = 2):
        super().__init__()
        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                                   net.layer4)
        self.pool = nn.AdaptiveAvgPool2d((freq_bins, 1))   # pool time, keep `freq_bins` frequency rows
        self.proj = nn.Linear(512 * freq_bins, out_dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 40, 101) or (B, 1, 40, 101) log-mel -> (B, out_dim)."""
        x = mel.unsqueeze(1) if mel.dim() == 3 else mel
        return self.proj(self.pool(self.trunk(x)).flatten(1))


class Fusion(nn.Module):
    """Psi: concat(z^I, z^A) -> FC 1024 -> ReLU -> FC 512, the image-audio estimate of the clip descriptor."""

    def __init__(self, image_dim: int = IMAGE_DIM, audio_dim: int = AUDIO_DIM, hidden: int = 1024,
                 out_dim: int = FUSED_DIM):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(image_dim + audio_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, out_dim))

    def forward(self, z_image: torch.Tensor, z_audio: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z_image, z_audio], dim=-1))


class ImgAud2Vid(nn.Module):
    """The student: image and audio streams, fusion Psi, and a classifier over the fused 512-d feature."""

    def __init__(self, num_classes: int = 400, image_dim: int = IMAGE_DIM, audio_dim: int = AUDIO_DIM,
                 fused_dim: int = FUSED_DIM):
        super().__init__()
        self.image_net = ImageNet(image_dim)
        self.audio_net = AudioNet(audio_dim)
        self.fusion = Fusion(image_dim, audio_dim, out_dim=fused_dim)
        self.classifier = nn.Linear(fused_dim, num_classes)
        self.num_classes = num_classes

    def forward(self, frames: torch.Tensor, mel: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (z^I, z^A, Psi(z^I, z^A), class logits)."""
        z_i, z_a = self.image_net(frames), self.audio_net(mel)
        fused = self.fusion(z_i, z_a)
        return z_i, z_a, fused, self.classifier(fused)


def imgaud2vid_student(num_classes: int = 400) -> ImgAud2Vid:
    """Build the ImgAud2Vid student (randomly initialised; weights are loaded by the caller)."""
    return ImgAud2Vid(num_classes=num_classes)


def distillation_loss(z_teacher: torch.Tensor, teacher_logits: torch.Tensor, z_student: torch.Tensor,
                      student_logits: torch.Tensor, lam: float = 100.0
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 4 of Listen to Look: L1(z^V, Psi(z^I, z^A)) + lambda * KL(Omega(V) || Phi(I, A)).

    The L1 term is Eq. 3's ||z^V - Psi(z^I, z^A)||_1, summed over the 512 dimensions and averaged over the batch;
    the KL term is sum_c p_t (log p_t - log p_s) averaged over the batch, with p_t = softmax(teacher logits),
    p_s = softmax(student logits). Returns (total, l1, kl).
    """
    l1 = (z_teacher - z_student).abs().sum(1).mean()
    log_p_t = torch.log_softmax(teacher_logits, dim=1)
    log_p_s = torch.log_softmax(student_logits, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean()
    return l1 + lam * kl, l1, kl

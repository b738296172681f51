"""Model weights: torchvision's weights API, local checkpoints, or a seeded random initialisation — always recorded.

Every loader returns the module and a provenance record ``{"source": ..., "sha256": ...}``; the hash is over the
parameters actually loaded, so two stores are comparable exactly when their hashes are equal.
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.models.video import R2Plus1D_18_Weights

from models.imgaud import ImgAud2Vid, audio_trunk_state, imgaud2vid_student
from models.teacher import R2Plus1DTeacher, r2plus1d_teacher

TEACHER_DEFAULT = "kinetics400"
STUDENT_DEFAULT = "imagenet"
# provenance "source" strings: written by the loaders below, read back by :func:`weights_spec`
KINETICS_SOURCE = "torchvision:R2Plus1D_18_Weights.KINETICS400_V1"
IMAGENET_SOURCE = "torchvision:ResNet18_Weights.IMAGENET1K_V1"


def _random_source(seed: int) -> str:
    return f"random(seed={seed})"


def is_random_source(source: str) -> bool:
    """Whether a provenance source names a seeded random initialisation (a fallback or ``random`` asked)."""
    return source.startswith("random(")


def _file_source(path: str) -> str:
    return f"file:{Path(path).resolve()}"


def weights_spec(record: dict) -> tuple[str, int]:
    """(spec for the loaders, seed) that reproduce the weights a provenance record names."""
    source = record["source"]
    found = re.search(r"random\(seed=(-?\d+)\)$", source)
    seed = int(found[1]) if found else 0
    if source.startswith("file:"):
        return source[len("file:"):], seed
    if source.startswith(KINETICS_SOURCE):
        return "kinetics400", seed
    if source.startswith(IMAGENET_SOURCE):
        return "imagenet", seed
    return "random", seed


class WeightsError(RuntimeError):
    """A weights file could not be read or does not fit the model."""


def state_hash(module: nn.Module) -> str:
    """sha256 (first 16 hex digits) over the module's state dict, keys sorted, tensors as float32 bytes."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise WeightsError(f"cannot read weights file {path}: {e}") from None
    if isinstance(ckpt, dict) and "state_dict" in ckpt and isinstance(ckpt["state_dict"], dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{path} holds no state dict")
    return ckpt


def _warn_random(what: str, why: str, seed: int) -> None:
    warnings.warn(f"{what}: {why}; using a RANDOM initialisation (seed {seed}). Descriptors will not be "
                  f"semantically meaningful until trained; provenance records this.", stacklevel=3)


_SEEDED_INIT = threading.Lock()


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Random initialisation from ``seed`` alone: one model at a time per process, the global RNG left as it was.

    Two threads building models at once (a Dask worker's first tasks) would otherwise interleave their draws from
    the global RNG and each get other weights than ``seed`` gives.
    """
    with _SEEDED_INIT, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_teacher(spec: str = TEACHER_DEFAULT, seed: int = 0) -> tuple[R2Plus1DTeacher, dict]:
    """The R(2+1)D-18 teacher from ``spec``: "kinetics400" (torchvision weights API), "random", or a file path.

    torchvision looks for the Kinetics weights in ``$TORCH_HOME/hub/checkpoints/r2plus1d_18-91a641e6.pth``; when
    they cannot be had (offline), a warning is issued and the model is randomly initialised with ``seed``.
    """
    if spec == "kinetics400":
        try:
            state = R2Plus1D_18_Weights.KINETICS400_V1.get_state_dict(progress=False, check_hash=True)
        except Exception as e:  # noqa: BLE001 - offline, proxy, corrupt cache: all mean "not available"
            _warn_random("R(2+1)D-18 Kinetics-400 weights unavailable", f"{type(e).__name__}: {e}", seed)
        else:
            model = r2plus1d_teacher(400)
            model.load_torchvision_state(state)
            return model, {"source": KINETICS_SOURCE, "sha256": state_hash(model),
                           "num_classes": 400}
        spec = "random"
    if spec == "random":
        with seeded_init(seed):
            model = r2plus1d_teacher(400)
        return model, {"source": _random_source(seed), "sha256": state_hash(model), "num_classes": 400}
    state = _read_checkpoint(spec)
    fc = state.get("fc.weight")
    if fc is None:
        raise WeightsError(f"{spec} is not an R(2+1)D-18 checkpoint (no fc.weight)")
    model = r2plus1d_teacher(int(fc.shape[0]))
    try:
        model.load_torchvision_state(state) if "stem.0.weight" in state else model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"{spec} does not fit R(2+1)D-18: {str(e).splitlines()[0]}") from None
    return model, {"source": _file_source(spec), "sha256": state_hash(model),
                   "num_classes": int(fc.shape[0])}


def load_student(spec: str = STUDENT_DEFAULT, seed: int = 0, num_classes: int = 400) -> tuple[ImgAud2Vid, dict]:
    """The ImgAud2Vid student from ``spec``: a checkpoint path, "imagenet" or "random".

    "imagenet" is the paper's undistilled starting point: both streams from torchvision's ImageNet ResNet-18 (the
    audio stream's first convolution averaged over the colour channels), Psi random (seeded). A distilled
    checkpoint (``fs train-distill``) is passed as a path.
    """
    if spec in ("imagenet", "random"):
        with seeded_init(seed):
            model = imgaud2vid_student(num_classes)
        source = _random_source(seed)
        if spec == "imagenet":
            try:
                state = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
            except Exception as e:  # noqa: BLE001
                _warn_random("ResNet-18 ImageNet weights unavailable for the student's image stream",
                             f"{type(e).__name__}: {e}", seed)
            else:
                model.image_net.trunk.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")},
                                                      strict=False)
                model.audio_net.trunk.load_state_dict(audio_trunk_state(state))
                source = f"{IMAGENET_SOURCE}+{_random_source(seed)}"
        return model, {"source": source, "sha256": state_hash(model), "num_classes": num_classes}
    state = _read_checkpoint(spec)
    cls = state.get("classifier.weight")
    if cls is None:
        raise WeightsError(f"{spec} is not an ImgAud2Vid checkpoint (no classifier.weight)")
    model = imgaud2vid_student(int(cls.shape[0]))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"{spec} does not fit the ImgAud2Vid student: {str(e).splitlines()[0]}") from None
    return model, {"source": _file_source(spec), "sha256": state_hash(model),
                   "num_classes": int(cls.shape[0])}


def load_recorded(name: str, record: dict) -> nn.Module:
    """The student or teacher a provenance record names, rebuilt and checked against the recorded hash."""
    spec, seed = weights_spec(record)
    model, got = (load_student(spec, seed, record.get("num_classes", 400)) if name == "student"
                  else load_teacher(spec, seed))
    if got["sha256"] != record["sha256"]:
        raise WeightsError(f"{record['source']} now hashes to {got['sha256']}, the store recorded {record['sha256']}")
    return model

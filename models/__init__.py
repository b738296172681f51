"""Pure torch modules and their losses: no file or store I/O here. Names are imported on first use, so that
``models.widths`` (and with it the store's listings) does not import torch."""
from __future__ import annotations

import importlib

_EXPORTS = {"AudioNet": "imgaud", "Fusion": "imgaud", "ImageNet": "imgaud", "ImgAud2Vid": "imgaud",
            "imgaud2vid_student": "imgaud", "R2Plus1DTeacher": "teacher", "r2plus1d_teacher": "teacher"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"models.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")

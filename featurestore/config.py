"""What an extraction computes and with which weights: the one hashable config every worker receives."""
from __future__ import annotations

from dataclasses import dataclass, replace

from featurestore.constants import (DESCRIPTORS, KEPT_CLIPS, KEPT_INPUTS, KEPT_MAPS, SIGNALS, STUDENT_DESCRIPTORS,
                                    stored_arrays)
from featurestore.weights import STUDENT_DEFAULT, TEACHER_DEFAULT, is_random_source

VIDEO_TIMEOUT_MIN = 60.0          # default --video-timeout: max(VIDEO_TIMEOUT_MIN, VIDEO_TIMEOUT_PER_SECOND × duration)
VIDEO_TIMEOUT_PER_SECOND = 4.0
VIDEO_TIMEOUT_UNKNOWN = 600.0     # ... and this when the container states no duration
GPU_PRECISION = "bfloat16-autocast"   # the models under bf16 autocast (Ψ and the log-mel stay float32)
CPU_PRECISION = "float32"


def compute_record(device: str) -> dict[str, str]:
    """How descriptors are computed on ``device``: its kind and precision. GPU and CPU descriptors differ beyond
    float tolerance (bf16 vs float32), so a store records this and refuses another."""
    gpu = str(device).startswith("cuda")
    return {"device": "cuda" if gpu else "cpu", "precision": GPU_PRECISION if gpu else CPU_PRECISION}


@dataclass(frozen=True)
class ExtractConfig:
    """What to compute and with which weights; hashable so each worker process loads the models once."""

    descriptors: tuple[str, ...] = DESCRIPTORS
    batch_size: int = 16
    device: str = "cpu"
    teacher_weights: str = TEACHER_DEFAULT
    student_weights: str = STUDENT_DEFAULT
    seed: int = 0
    threads: int = 0      # torch intra-op threads per worker; 0 leaves torch's default
    keep_inputs: bool = False   # also store each step's first frame (uint8) and log-mel (float16)
    keep_clips: bool = False    # also store each step's 16-frame teacher clip (uint8; large)
    spatial_map: bool = False   # also store each step's image_map (AVGN's e^G; implies keep_inputs, needs the student)
    weights_sha256: tuple[tuple[str, str], ...] = ()   # (model, sha256) the client loaded; workers must match
    hwaccel: str = ""           # ffmpeg hardware decoding ("cuda"); software decoding when empty or unusable
    decode_threads: int = 0     # ffmpeg decoder threads per video; 0 lets ffmpeg choose
    video_timeout: float | None = None   # seconds of ffmpeg time per video; None: video_time_limit's default; 0: none
    signals: tuple[str, ...] = SIGNALS   # signal-energy arrays (``()`` when appending to a store built before them)

    def __post_init__(self) -> None:
        if self.video_timeout is not None and not self.video_timeout >= 0:
            raise ValueError(f"--video-timeout must be at least 0 seconds (0: no limit), got {self.video_timeout}")
        if self.spatial_map and not self.keep_inputs:     # the spatial glance crops the kept frame: keep it too
            object.__setattr__(self, "keep_inputs", True)
        unknown = set(self.descriptors) - set(DESCRIPTORS)
        if unknown or not self.descriptors:
            raise ValueError(f"--descriptors must name some of {', '.join(DESCRIPTORS)}; got "
                             f"{', '.join(self.descriptors) or 'nothing'}")

    @property
    def compute(self) -> dict[str, str]:
        """The device kind and precision this config's descriptors are computed in (:func:`compute_record`)."""
        return compute_record(self.device)

    @property
    def needs_teacher(self) -> bool:
        return "r2p1d" in self.descriptors

    @property
    def needs_student(self) -> bool:
        return bool(set(STUDENT_DESCRIPTORS) & set(self.descriptors)) or self.spatial_map

    def resolved(self, models: dict[str, dict]) -> "ExtractConfig":
        """This config with pretrained-weight requests that fell back to random init pinned to "random".

        The client resolves weights once, so workers never load different weights than the store records.
        """
        fell_back = {name: is_random_source(rec["source"]) for name, rec in models.items()}
        return replace(self,
                       teacher_weights="random" if fell_back.get("teacher") else self.teacher_weights,
                       student_weights="random" if fell_back.get("student") else self.student_weights,
                       weights_sha256=tuple(sorted((name, rec["sha256"]) for name, rec in models.items()
                                                   if rec.get("sha256"))))

    def video_time_limit(self, duration: float | None) -> float:
        """Seconds of ffmpeg time a video of ``duration`` seconds (None: unknown) may take, 0 for no limit.

        ``video_timeout`` when set; by default ``max(60, 4 × duration)``, and 600 s when the container states no
        duration. A healthy decode to 112×112 frames runs far faster than real time, so only a hung or looping
        decoder reaches it.
        """
        if self.video_timeout is not None:
            return float(self.video_timeout)
        if duration is None:
            return VIDEO_TIMEOUT_UNKNOWN
        return max(VIDEO_TIMEOUT_MIN, VIDEO_TIMEOUT_PER_SECOND * duration)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The model inputs kept in the store beside the descriptors."""
        return ((KEPT_INPUTS if self.keep_inputs else ()) + (KEPT_MAPS if self.spatial_map else ())
                + (KEPT_CLIPS if self.keep_clips else ()))

    def stored_arrays(self) -> list[str]:
        """Every array a video extracted with this config holds."""
        return stored_arrays(self.descriptors, self.inputs, self.signals)


"""The extractor: the models of one config, loaded once per process, turning one decode of a video into its arrays.

Step inputs go to the process's :class:`~featurestore.batching.CrossVideoBatcher` as they are decoded, so that the
batches fill from every video in flight.
"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future

import numpy as np
import torch

from featurestore import SCHEMA_VERSION, __version__
from featurestore.audio import LogMel, step_windows
from featurestore.batching import CrossVideoBatcher
from featurestore.config import GPU_PRECISION, ExtractConfig, compute_record
from featurestore.constants import (CLIP_FRAMES, CLIP_SPAN, CROP, FEATURE_DIMS, FPS, LOUDNESS_FLOOR_DB, MEL_FRAMES,
                                    N_MELS, SAMPLE_RATE, array_source, extraction_params)
from featurestore.decode import DecodedVideo, DecodeError, decode_with_fallback, probe
from featurestore.signals import MotionGrid, loudness_db, mel_spectrum, silent_spectrum
from featurestore.steps import iter_steps, step_times
from featurestore.weights import WeightsError, load_student, load_teacher

REQUEST_STEPS = 4       # steps per request to the batcher (one decoded chunk of 64 frames)
MAX_QUEUED_BATCHES = 2  # full batches' worth of rows per model a video may queue before its decode waits


class Extractor:
    """The models of one extraction config, loaded once per process, and the per-video computation."""

    def __init__(self, config: ExtractConfig, device: str | None = None):
        self.config = config
        self.device = torch.device(device or config.device)
        self.compute = compute_record(self.device.type)
        self.models: dict[str, dict] = {}
        self.teacher = self.student = None
        if config.threads:
            torch.set_num_threads(config.threads)
        gpu = self.device.type == "cuda"
        if config.needs_teacher:
            self.teacher, rec = load_teacher(config.teacher_weights, config.seed)
            self.teacher.eval().to(self.device, memory_format=torch.channels_last_3d if gpu else torch.preserve_format)
            self.models["teacher"] = rec
        if config.needs_student:
            self.student, rec = load_student(config.student_weights, config.seed)
            self.student.eval().to(self.device, memory_format=torch.channels_last if gpu else torch.preserve_format)
            self.models["student"] = rec
        for name, sha in config.weights_sha256:
            got = self.models.get(name, {}).get("sha256")
            if got != sha:
                raise WeightsError(f"this worker loaded {name} weights sha256 {got}, the client {sha} (a checkpoint "
                                   f"changed, or another torchvision here?): nothing written with them")
        self.log_mel = LogMel().to(self.device)
        self.batcher = self._make_batcher()

    def provenance(self) -> dict:
        """What produced the arrays: fs and schema versions, model weights and hashes, extraction parameters."""
        return {
            "fs_version": __version__, "schema_version": SCHEMA_VERSION, "torch": torch.__version__,
            "models": self.models, "arrays": {name: source for name in self.config.stored_arrays()
                                              if (source := array_source(name))},
            "params": extraction_params(), "compute": self._compute_provenance(),
        }

    def _compute_provenance(self) -> dict[str, str]:
        """The device kind and precision (what a store compares), and the GPU's name (what a reader may want)."""
        if self.device.type == "cuda":
            return {**self.compute, "gpu": torch.cuda.get_device_name(self.device)}
        return dict(self.compute)

    def autocast(self):
        """bf16 autocast on a GPU; plain float32 on the CPU (``self.compute`` records which)."""
        if self.compute["precision"] == GPU_PRECISION:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _make_batcher(self) -> CrossVideoBatcher:
        """The process's inference thread: image, audio (log-mel + audio net), fusion and clip batches."""
        student, teacher = self.student, self.teacher
        fns, bs = {}, self.config.batch_size

        def audio(windows):
            mel = self.log_mel(windows)
            if student is None:
                return (mel,)
            with self.autocast():
                return mel, student.audio_net(mel)
        fns["audio"] = audio
        if student is not None:
            if self.config.spatial_map:
                def image(frames):       # e^G is the by-product of z^I: one pass of the trunk gives both
                    with self.autocast():
                        e_g, z_i = student.image_net.global_map(frames)
                        return z_i, e_g
            else:
                def image(frames):
                    with self.autocast():
                        return (student.image_net(frames),)

            def fused(z_i, z_a):
                return (student.fusion(z_i, z_a),)     # tiny; float32 on every device
            fns.update(image=image, fused=fused)
        if teacher is not None:
            def clip(clips):
                with self.autocast():
                    return tuple(teacher(clips))
            fns["clip"] = clip
        sizes = {"audio": 4 * bs, "image": 4 * bs, "fused": 4 * bs, "clip": bs}
        return CrossVideoBatcher(fns, {k: sizes[k] for k in fns}, self.device)

    def sample_inputs(self, kind: str, rows: int) -> tuple[np.ndarray, ...]:
        """Zeros of ``rows`` rows shaped and typed as the ``kind`` model's batcher inputs (warm-up, model rates)."""
        shapes = {"audio": [(SAMPLE_RATE,)], "image": [(CROP, CROP, 3)], "clip": [(CLIP_FRAMES, CROP, CROP, 3)],
                  "fused": [(FEATURE_DIMS["image"],), (FEATURE_DIMS["audio"],)]}
        dtype = np.uint8 if kind in ("image", "clip") else np.float32
        return tuple(np.zeros((rows, *shape), dtype) for shape in shapes[kind])

    def warm_up_sizes(self) -> dict[str, list[int]]:
        """The batch sizes :meth:`warm_up` runs per model: on a GPU every size a batch can have (a partial batch
        runs whenever the device would otherwise idle, and each new size pays cuDNN/cuBLAS set-up once); on the CPU
        the full batch only."""
        if self.device.type == "cuda":
            return {kind: list(range(1, size + 1)) for kind, size in self.batcher.batch_sizes.items()}
        return {kind: [size] for kind, size in self.batcher.batch_sizes.items()}

    def warm_up(self) -> None:
        """Run each model at each of :meth:`warm_up_sizes`, so start-up costs (CUDA context, kernel choice per
        batch shape) are paid here and not inside a timed run."""
        for kind, sizes in self.warm_up_sizes().items():
            for n in sizes:        # one at a time: requests queued together would be packed into full batches
                self.batcher.submit(kind, *self.sample_inputs(kind, n)).result()

    def extract(self, path: str, stage: list[str]) -> tuple[dict[str, np.ndarray], dict]:
        """Decode ``path`` once and return (arrays, attrs). ``stage[0]`` tracks progress for failure reports.

        Step inputs go to the process's :class:`CrossVideoBatcher` every ``REQUEST_STEPS`` steps as they are decoded,
        so the batches fill from all the videos in flight; a video queues at most ``MAX_QUEUED_BATCHES`` batches'
        worth of rows per model, which bounds host memory when the models are slower than decoding.
        """
        stage[0] = "probe"
        info = probe(path, timeout=self.config.video_time_limit(0.0))   # the limit's floor: durations come later
        if not info.has_video:
            raise DecodeError("no video stream")
        cfg, batcher = self.config, self.batcher
        time_limit = cfg.video_time_limit(info.duration)
        image_futs: list[Future] = []
        clip_futs: list[Future] = []
        first_frames, clips = [], []
        kept_frames, kept_clips = [], []

        def send(kind: str, rows: list[np.ndarray], futs: list[Future]) -> None:
            futs.append(batcher.submit(kind, np.stack(rows)))
            rows.clear()
            # requests of one kind are served in order: waiting for an older one bounds this video's queued rows
            limit = max(1, MAX_QUEUED_BATCHES * batcher.batch_sizes[kind] // REQUEST_STEPS)
            if len(futs) > limit:
                _result(futs[-limit - 1], stage)

        def decode(hwaccel: str) -> tuple[int, np.ndarray, int, MotionGrid]:
            n = 0
            motion = MotionGrid()
            with DecodedVideo(path, with_audio=info.has_audio, hwaccel=hwaccel, threads=cfg.decode_threads,
                              timeout=time_limit) as dec:
                for k, first, clip in iter_steps(motion.watch(dec.frames())):
                    n = k + 1
                    if cfg.keep_inputs:
                        kept_frames.append(first)
                    if cfg.keep_clips:
                        kept_clips.append(clip)
                    if self.student is not None:
                        first_frames.append(first)
                        if len(first_frames) == REQUEST_STEPS:
                            send("image", first_frames, image_futs)
                    if self.teacher is not None:
                        clips.append(clip)
                        if len(clips) == REQUEST_STEPS:
                            send("clip", clips, clip_futs)
                return n, dec.audio(), dec.n_frames, motion

        stage[0] = "decode"
        (n, audio, n_frames, motion), decoded_with = decode_with_fallback(
            decode, cfg.hwaccel, can_retry=lambda: not (first_frames or clips or image_futs or clip_futs or kept_frames))
        stage[0] = "model"
        if first_frames:
            send("image", first_frames, image_futs)
        if clips:
            send("clip", clips, clip_futs)
        t = step_times(n)
        has_audio = bool(info.has_audio and len(audio) > 0)
        arrays: dict[str, np.ndarray] = {"t": t}
        windows = step_windows(audio, t, SAMPLE_RATE) if has_audio else None
        if "loudness" in cfg.signals:
            arrays["loudness"] = loudness_db(windows) if has_audio else np.full(n, LOUDNESS_FLOOR_DB, np.float32)
        if "motion" in cfg.signals:
            arrays["motion"] = motion.array(n)
        mel = z_a = None
        if has_audio and (self.student is not None or cfg.keep_inputs or "spectrum" in cfg.signals):
            mel, *rest = _result(batcher.submit("audio", windows), stage)
            z_a = rest[0] if rest else None
        if "spectrum" in cfg.signals:
            arrays["spectrum"] = mel_spectrum(mel) if mel is not None else silent_spectrum(n)
        if self.student is not None:
            images = [_result(f, stage) for f in image_futs]
            z_i = np.concatenate([out[0] for out in images])
            if cfg.spatial_map:
                arrays["image_map"] = np.concatenate([out[1] for out in images]).astype(np.float16)
            if z_a is None:
                z_a = np.zeros((n, FEATURE_DIMS["audio"]), np.float32)
            for name, value in (("image", z_i), ("audio", z_a)):
                if name in cfg.descriptors:
                    arrays[name] = value.astype(np.float16)
            if "fused" in cfg.descriptors:
                arrays["fused"] = _result(batcher.submit("fused", z_i, z_a), stage)[0].astype(np.float16)
        if self.teacher is not None:
            outs = [_result(f, stage) for f in clip_futs]
            arrays["r2p1d"] = np.concatenate([z for z, _ in outs]).astype(np.float16)
            arrays["r2p1d_logits"] = np.concatenate([logits for _, logits in outs]).astype(np.float16)
        if cfg.keep_inputs:
            arrays["frames"] = np.stack(kept_frames)
            arrays["mel"] = (mel if mel is not None else np.zeros((n, N_MELS, MEL_FRAMES), np.float32)).astype(np.float16)
        if cfg.keep_clips:
            arrays["clips"] = np.stack(kept_clips)
        attrs = {
            "fps": FPS, "n_frames": int(n_frames), "n_steps": int(n), "duration": round(n_frames / FPS, 4),
            "container_duration": info.duration, "has_audio": has_audio,
            "audio_rms": float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) if has_audio else 0.0,
            "short": bool(n_frames < CLIP_SPAN), "source_size": [info.width, info.height], "decoder": decoded_with,
        }
        return arrays, attrs


def _result(fut: Future, stage: list[str]) -> tuple[np.ndarray, ...]:
    """A batcher result; a model error is reported at the "model" stage."""
    try:
        return fut.result()
    except Exception:
        stage[0] = "model"
        raise



_EXTRACTORS: dict[tuple[ExtractConfig, str], Extractor] = {}
_EXTRACTORS_LOCK = threading.Lock()


def get_extractor(config: ExtractConfig, device: str | None = None) -> Extractor:
    """This process's one extractor for ``config`` (models are loaded on first use only, by one thread)."""
    key = (config, device or config.device)
    with _EXTRACTORS_LOCK:
        if key not in _EXTRACTORS:
            _EXTRACTORS[key] = Extractor(config, device)
        return _EXTRACTORS[key]


def batch_counts() -> dict[str, list[int]]:
    """{model kind: [rows, batches]} run so far by this process's extractors (mean batch fill = rows / batches)."""
    counts: dict[str, list[int]] = {}
    for ex in _EXTRACTORS.values():
        for kind, batches in ex.batcher.batches_run.items():
            c = counts.setdefault(kind, [0, 0])
            c[0] += ex.batcher.rows_run[kind]
            c[1] += batches
    return counts


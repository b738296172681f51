"""The extraction task: decode a video once, derive every step's inputs, run the models, write one store group.

Steps follow the paper: a step starts every 16 frames (at 30 fps) while frames remain, so N = ceil(frames / 16).
For step k starting at frame s = 16k the extractor derives
  * the image input: frame s,
  * the audio input: 1 s of 16 kHz audio from s / 30 seconds, as a 40x101 log-mel,
  * the teacher input: 16 frames s, s+2, ..., s+30.
Frames and audio past the end are padded (last frame repeated, audio with zeros).
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import traceback
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np
import torch

from featurestore import SCHEMA_VERSION, __version__
from featurestore.audio import HOP, N_FFT, N_MELS, LogMel, step_windows
from featurestore.batching import CrossVideoBatcher
from featurestore.decode import (CROP, FPS, SAMPLE_RATE, SHORT_SIDE, DecodedVideo, DecodeError, decode_with_fallback,
                                 hwaccel_failure, probe)
from featurestore.store import DESCRIPTORS, FeatureStore
from featurestore.weights import STUDENT_DEFAULT, TEACHER_DEFAULT, WeightsError, load_student, load_teacher

STEP_FRAMES = 16       # a new image-audio pair every 16 frames
CLIP_FRAMES = 16       # frames in the teacher's clip
CLIP_STRIDE = 2        # ... taking every other frame, so a clip spans 32 frames (~1 s)
CLIP_SPAN = (CLIP_FRAMES - 1) * CLIP_STRIDE + 1


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
    weights_sha256: tuple[tuple[str, str], ...] = ()   # (model, sha256) the client loaded; workers must match
    hwaccel: str = ""           # ffmpeg hardware decoding ("cuda"); software decoding when empty or unusable
    decode_threads: int = 0     # ffmpeg decoder threads per video; 0 lets ffmpeg choose

    def __post_init__(self) -> None:
        unknown = set(self.descriptors) - set(DESCRIPTORS)
        if unknown or not self.descriptors:
            raise ValueError(f"--descriptors must name some of {', '.join(DESCRIPTORS)}; got "
                             f"{', '.join(self.descriptors) or 'nothing'}")

    @property
    def needs_teacher(self) -> bool:
        return "r2p1d" in self.descriptors

    @property
    def needs_student(self) -> bool:
        return bool({"image", "audio", "fused"} & set(self.descriptors))

    def resolved(self, models: dict[str, dict]) -> "ExtractConfig":
        """This config with pretrained-weight requests that fell back to random init pinned to "random".

        The client resolves weights once, so workers never load different weights than the store records.
        """
        fell_back = {name: rec["source"].startswith("random(") for name, rec in models.items()}
        return replace(self,
                       teacher_weights="random" if fell_back.get("teacher") else self.teacher_weights,
                       student_weights="random" if fell_back.get("student") else self.student_weights,
                       weights_sha256=tuple(sorted((name, rec["sha256"]) for name, rec in models.items()
                                                   if rec.get("sha256"))))

    @property
    def inputs(self) -> tuple[str, ...]:
        """The model inputs kept in the store beside the descriptors."""
        return (("frames", "mel") if self.keep_inputs else ()) + (("clips",) if self.keep_clips else ())

    def stored_arrays(self) -> list[str]:
        names = ["t"] + [d for d in DESCRIPTORS if d in self.descriptors]
        return names + (["r2p1d_logits"] if self.needs_teacher else []) + list(self.inputs)


def n_steps_for(n_frames: int) -> int:
    """N = ceil(frames / 16): a step starts every 16 frames while frames remain."""
    return -(-n_frames // STEP_FRAMES)


def iter_steps(chunks: Iterator[np.ndarray]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Turn a stream of frame chunks into (step index, first frame, 16-frame clip) with at most ~2 chunks held.

    A step is emitted as soon as the frames its clip needs have arrived; at the end of the stream the remaining
    steps are emitted with indices past the last frame clamped to it (the last frame repeated).
    """
    buf = np.empty((0, CROP, CROP, 3), np.uint8)
    buf_start = 0                      # global index of buf[0]
    k = 0
    offsets = np.arange(CLIP_FRAMES) * CLIP_STRIDE
    for chunk in chunks:
        buf = np.concatenate([buf, chunk]) if len(buf) else chunk
        while STEP_FRAMES * k + CLIP_SPAN <= buf_start + len(buf):
            s = STEP_FRAMES * k - buf_start
            yield k, buf[s], buf[s + offsets]
            k += 1
        drop = STEP_FRAMES * k - buf_start
        if drop > 0:
            buf, buf_start = buf[drop:], buf_start + drop
    end = buf_start + len(buf)
    while STEP_FRAMES * k < end:
        idx = np.minimum(STEP_FRAMES * k + offsets, end - 1) - buf_start
        yield k, buf[STEP_FRAMES * k - buf_start], buf[idx]
        k += 1


class Extractor:
    """The models of one extraction config, loaded once per process, and the per-video computation."""

    def __init__(self, config: ExtractConfig, device: str | None = None):
        self.config = config
        self.device = torch.device(device or config.device)
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
        arrays = {}
        for name in self.config.stored_arrays():
            if name in ("image", "audio", "fused"):
                arrays[name] = "student"
            elif name.startswith("r2p1d"):
                arrays[name] = "teacher"
            elif name in ("frames", "mel", "clips"):
                arrays[name] = "decode"
        return {
            "fs_version": __version__, "schema_version": SCHEMA_VERSION, "torch": torch.__version__,
            "models": self.models, "arrays": arrays,
            "params": {"fps": FPS, "short_side": SHORT_SIDE, "crop": CROP, "step_frames": STEP_FRAMES,
                       "clip_frames": CLIP_FRAMES, "clip_stride": CLIP_STRIDE, "sample_rate": SAMPLE_RATE,
                       "n_fft": N_FFT, "hop": HOP, "n_mels": N_MELS, "window": "hann", "log_eps": 1e-6},
        }

    def autocast(self):
        """bf16 autocast on a GPU; plain float32 on the CPU."""
        if self.device.type == "cuda":
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

    def warm_up(self) -> None:
        """One full batch of zeros per model, so start-up costs (CUDA context, kernel choice) are paid here."""
        shapes = {"audio": [(SAMPLE_RATE,)], "image": [(CROP, CROP, 3)], "clip": [(CLIP_FRAMES, CROP, CROP, 3)]}
        if self.student is not None:
            width = self.student.audio_net.proj.out_features
            shapes["fused"] = [(self.student.image_net.proj.out_features,), (width,)]
        futs = [self.batcher.submit(kind, *[np.zeros((size, *shape), np.uint8 if kind in ("image", "clip")
                                                      else np.float32) for shape in shapes[kind]])
                for kind, size in self.batcher.batch_sizes.items()]
        for f in futs:
            f.result()

    def extract(self, path: str, stage: list[str]) -> tuple[dict[str, np.ndarray], dict]:
        """Decode ``path`` once and return (arrays, attrs). ``stage[0]`` tracks progress for failure reports.

        Step inputs go to the process's :class:`CrossVideoBatcher` every ``REQUEST_STEPS`` steps as they are decoded,
        so the batches fill from all the videos in flight; a video queues at most ``MAX_QUEUED_BATCHES`` batches'
        worth of rows per model, which bounds host memory when the models are slower than decoding.
        """
        stage[0] = "probe"
        info = probe(path)
        if not info.has_video:
            raise DecodeError("no video stream")
        cfg, batcher = self.config, self.batcher
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

        def decode(hwaccel: str) -> tuple[int, np.ndarray, int]:
            n = 0
            with DecodedVideo(path, with_audio=info.has_audio, hwaccel=hwaccel, threads=cfg.decode_threads) as dec:
                for k, first, clip in iter_steps(dec.frames()):
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
                return n, dec.audio(), dec.n_frames

        stage[0] = "decode"
        (n, audio, n_frames), decoded_with = decode_with_fallback(
            decode, cfg.hwaccel, can_retry=lambda: not (first_frames or clips or image_futs or clip_futs or kept_frames))
        stage[0] = "model"
        if first_frames:
            send("image", first_frames, image_futs)
        if clips:
            send("clip", clips, clip_futs)
        t = (np.arange(n, dtype=np.float32) * STEP_FRAMES / FPS).astype(np.float32)
        has_audio = bool(info.has_audio and len(audio) > 0)
        arrays: dict[str, np.ndarray] = {"t": t}
        mel = z_a = None
        if has_audio and (self.student is not None or cfg.keep_inputs):
            mel, *rest = _result(batcher.submit("audio", step_windows(audio, t, SAMPLE_RATE)), stage)
            z_a = rest[0] if rest else None
        if self.student is not None:
            z_i = np.concatenate([_result(f, stage)[0] for f in image_futs])
            if z_a is None:
                z_a = np.zeros((n, self.student.audio_net.proj.out_features), np.float32)
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
            arrays["mel"] = (mel if mel is not None else np.zeros((n, N_MELS, 101), np.float32)).astype(np.float16)
        if cfg.keep_clips:
            arrays["clips"] = np.stack(kept_clips)
        attrs = {
            "fps": FPS, "n_frames": int(n_frames), "n_steps": int(n), "duration": round(n_frames / FPS, 4),
            "container_duration": info.duration, "has_audio": has_audio,
            "audio_rms": float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) if has_audio else 0.0,
            "short": bool(n_frames < CLIP_SPAN), "source_size": [info.width, info.height], "decoder": decoded_with,
        }
        return arrays, attrs


REQUEST_STEPS = 4       # steps per request to the batcher (one decoded chunk of 64 frames)
MAX_QUEUED_BATCHES = 2  # full batches' worth of rows per model a video may queue before its decode waits


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


def worker_device(config: ExtractConfig, name=None) -> str:
    """The device this Dask worker (named ``name``, default: the running task's) should use: its own GPU when
    extracting on GPUs, else the CPU."""
    if not config.device.startswith("cuda") or ":" in config.device:
        return config.device
    if name is None:
        try:
            from distributed import get_worker
            name = get_worker().name
        except (ImportError, ValueError):
            return "cuda:0"
    n = torch.cuda.device_count()
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").count(",") == 0 and os.environ.get("CUDA_VISIBLE_DEVICES"):
        return "cuda:0"   # dask-cuda pins one device per worker
    return f"cuda:{int(name) % n}" if isinstance(name, int) and n else "cuda:0"


@dataclass
class VideoResult:
    """What a task reports back to the client (which alone writes the failures table)."""

    video_id: str
    path: str
    ok: bool
    stage: str = ""
    error: str = ""
    n_steps: int = 0
    duration: float = 0.0
    seconds: float = 0.0
    written: bool = True
    details: dict = field(default_factory=dict)


def extract_video_task(row: dict, store_path: str, config: ExtractConfig) -> VideoResult:
    """Extract one manifest row into the store. Never raises: failures come back as a result with the reason."""
    t0 = time.perf_counter()
    stage = ["load"]
    vid, path = row["video_id"], row["path"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the client loaded the same weights first and already warned
            extractor = get_extractor(config, worker_device(config))
        arrays, attrs = extractor.extract(path, stage)
        stage[0] = "write"
        attrs.update({"label": row["label"], "split": row["split"], "path": path,
                      "segments": row.get("segments", "") or "", "provenance": extractor.provenance()})
        written = FeatureStore(store_path, mode="a").write_video(vid, arrays, attrs)
        return VideoResult(vid, path, True, n_steps=attrs["n_steps"], duration=attrs["duration"],
                           seconds=time.perf_counter() - t0, written=written,
                           details={"hwaccel_error": hwaccel_failure(config.hwaccel)} if config.hwaccel else {})
    except Exception as e:  # noqa: BLE001 - every failure becomes a failures-table row, never a crashed run
        msg = f"{type(e).__name__}: {e}" if not isinstance(e, DecodeError) else str(e)
        return VideoResult(vid, path, False, stage=stage[0], error=msg.strip().splitlines()[0] if msg.strip() else
                           type(e).__name__, seconds=time.perf_counter() - t0,
                           details={"traceback": traceback.format_exc(limit=3)})


@dataclass
class ExtractionSummary:
    """Totals of one ``fs extract`` run."""

    submitted: int = 0
    stored: int = 0
    failed: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    steps: int = 0
    video_seconds: float = 0.0
    wall_seconds: float = 0.0
    hwaccel_error: str = ""

    def line(self) -> str:
        rate = (f"; {self.wall_seconds / (self.video_seconds / 60):.1f} s of wall time per video-minute"
                if self.video_seconds else "")
        return (f"stored {self.stored}, failed {self.failed}, skipped {self.skipped_done} already stored and "
                f"{self.skipped_failed} failed earlier; {self.steps} steps from {self.video_seconds / 60:.2f} "
                f"video-minutes in {self.wall_seconds:.1f} s{rate}")


def run_extraction(manifest, store: FeatureStore, config: ExtractConfig, client, dataset: str,
                   classes: list[str], retry_failed: bool = False, progress: bool = True) -> ExtractionSummary:
    """Extract every manifest row not yet in ``store``, one Dask task per video, with a progress bar.

    Completed videos are skipped; videos that failed before are skipped unless ``retry_failed``. Each failure is
    appended to the store's failures table as soon as it is reported, so an interrupted run loses nothing.
    """
    from distributed import as_completed
    from tqdm import tqdm

    with store.writer_lock("fs extract"):
        local = get_extractor(config, "cpu")
        store.initialise(dataset, classes, config.descriptors, local.provenance(), config.inputs)
        config = config.resolved(local.models)
        store.clear_partials()
        summary = ExtractionSummary()
        done = set(store.video_ids())
        failed_before = set() if retry_failed else set(store.failures()["video_id"])
        rows = []
        for row in manifest.to_dict("records"):
            if row["video_id"] in done:
                summary.skipped_done += 1
            elif row["video_id"] in failed_before:
                summary.skipped_failed += 1
            else:
                rows.append(row)
        t0 = time.perf_counter()
        futures = [client.submit(extract_video_task, row, str(store.path), config, pure=False,
                                 key=f"extract-{row['video_id']}-{os.getpid()}") for row in rows]
        by_key = {f.key: row for f, row in zip(futures, rows)}
        summary.submitted = len(futures)
        stored_ids = []
        bar = tqdm(total=len(futures), unit="video", desc="extract", disable=not progress, dynamic_ncols=True)
        for fut in as_completed(futures):
            row = by_key[fut.key]
            try:
                res: VideoResult = fut.result()
            except Exception as e:  # noqa: BLE001 - a dead worker (OOM, segfault) fails its video, not the run
                res = VideoResult(row["video_id"], row["path"], False, stage="worker",
                                  error=f"{type(e).__name__}: {e}")
            if res.details.get("hwaccel_error") and not summary.hwaccel_error:
                summary.hwaccel_error = res.details["hwaccel_error"]
                bar.write(f"warning: {summary.hwaccel_error}")
            if res.ok:
                summary.stored += 1
                summary.steps += res.n_steps
                summary.video_seconds += res.duration
                stored_ids.append(res.video_id)
            else:
                summary.failed += 1
                store.record_failure(res.video_id, res.path, res.stage, res.error)
                bar.write(f"failed {res.video_id} ({res.stage}): {res.error}")
            bar.set_postfix(stored=summary.stored, failed=summary.failed)
            bar.update(1)
            fut.release()
        bar.close()
        store.forget_failures(stored_ids)
        summary.wall_seconds = time.perf_counter() - t0
    return summary

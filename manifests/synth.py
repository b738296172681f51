"""The embedded synthetic dataset: long untrimmed videos whose class shows only in a few sparse segments.

Each class has a visual signature (shape, colour, stripe texture, motion path) and an audio signature (tone
pitch, beep rhythm, chirp direction). A video is mostly background (a drifting noise texture, pink noise and
babble-like audio) with 2-5 short action segments of its class, plus distractor segments that show a class's
picture without its sound or its sound without the picture (any class, the video's own included, so that a
distractor never tells which class a video is not): the situation Listen to Look and SCSampler address, where most
clips are uninformative and audio is a cheap preview of the useful ones. Optional confounders (``confounders``) add
class-neutral loud noise bursts and moving noise patches at the loudness and motion of actions, so that signal
energy alone finds background as often as actions.

Generation is deterministic in the seed; videos are real H.264/AAC mp4 files encoded by ffmpeg.
"""
from __future__ import annotations

import colorsys
import math
import os
import subprocess
import tempfile
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import ffmpeg
import numpy as np
import pandas as pd

from featurestore.decode import ffmpeg_exe

WIDTH, HEIGHT, FPS = 192, 144, 30
AUDIO_RATE = 44100  # encoded stereo at 44.1 kHz so the extractor's downmix and resampling are exercised
SPRITE = 44
DEFAULT_VIDEOS, DEFAULT_CLASSES, DEFAULT_SECONDS = 12, 3, (12.0, 20.0)   # the embedded default dataset
# action statistics: segments per video, segment length (s), and the most of a video segments may cover
DEFAULT_ACTIONS, DEFAULT_ACTION_SECONDS, DEFAULT_ACTION_SHARE = (2, 5), (1.5, 3.5), 1 / 3
DEFAULT_CONFOUNDERS = (0, 0)          # class-neutral loud/moving segments per video MIN:MAX (none by default)
CONFOUNDER_KINDS = ("audio", "visual", "av")   # a noise burst, a moving noise patch, or both at once
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")


@dataclass(frozen=True)
class ClassSignature:
    """What makes one synthetic class recognisable, visually and aurally."""

    index: int
    name: str
    shape: str
    rgb: tuple[float, float, float]
    stripes: int          # stripe frequency of the object texture (0 = plain)
    motion: str           # "linear", "circle" or "bounce"
    angle: float          # motion direction (radians)
    tone_hz: float        # carrier pitch of the sound
    beep_hz: float        # rhythm: beeps per second
    chirp: float          # pitch glide within a beep, as a fraction of tone_hz (+ up, - down)


def class_signatures(n_classes: int) -> list[ClassSignature]:
    """Deterministic, mutually distinct signatures for ``n_classes`` classes."""
    sigs = []
    for c in range(n_classes):
        shape = SHAPES[c % len(SHAPES)]
        colour_i = (c * 3) % len(COLOURS)
        hue = colour_i / len(COLOURS)
        rgb = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
        sigs.append(ClassSignature(
            index=c,
            name=f"c{c:02d}_{COLOURS[colour_i]}_{shape}",
            shape=shape,
            rgb=rgb,
            stripes=(c // len(SHAPES)) % 3,
            motion=("linear", "circle", "bounce")[c % 3],
            angle=2 * math.pi * ((c * 0.381966) % 1.0),
            tone_hz=220.0 * 2 ** (c * 7 % 24 / 12),   # two octaves, spread by fifths
            beep_hz=(1.5, 3.0, 5.0, 8.0)[c % 4],
            chirp=(0.0, 0.25, -0.25)[(c // 2) % 3],
        ))
    return sigs


@dataclass
class Segment:
    start: float
    end: float
    cls: int              # the class shown; -1 for a class-neutral confounder
    visual: bool = True
    audio: bool = True

    @property
    def kind(self) -> str:
        """``audio``, ``visual`` or ``av``: what the segment shows."""
        return "av" if self.visual and self.audio else "visual" if self.visual else "audio"


@dataclass
class VideoPlan:
    """Everything needed to render one video; the manifest's ground truth comes from here."""

    video_id: str
    label: int
    duration: float
    split: str
    seed: int
    actions: list[Segment] = field(default_factory=list)
    distractors: list[Segment] = field(default_factory=list)
    confounders: list[Segment] = field(default_factory=list)


def _sprite(sig: ClassSignature) -> tuple[np.ndarray, np.ndarray]:
    """The class's object: an alpha mask (S,S) and its colour texture (S,S,3) in [0,1]."""
    s = SPRITE
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    u, v = (x - s / 2 + 0.5) / (s / 2), (y - s / 2 + 0.5) / (s / 2)
    if sig.shape == "circle":
        mask = u ** 2 + v ** 2 <= 0.9
    elif sig.shape == "square":
        mask = (np.abs(u) <= 0.75) & (np.abs(v) <= 0.75)
    elif sig.shape == "triangle":
        mask = (v <= 0.8) & (v >= -0.8) & (np.abs(u) <= (v + 0.8) / 1.6 * 0.9)
    elif sig.shape == "diamond":
        mask = np.abs(u) + np.abs(v) <= 0.95
    elif sig.shape == "cross":
        mask = ((np.abs(u) <= 0.28) | (np.abs(v) <= 0.28)) & (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9)
    else:  # ring
        r2 = u ** 2 + v ** 2
        mask = (r2 <= 0.9) & (r2 >= 0.35)
    tex = np.ones((s, s, 1), np.float32)
    if sig.stripes:
        period = 12 / sig.stripes
        tex = (0.55 + 0.45 * (np.sin(2 * np.pi * (x + y) / period) > 0))[..., None].astype(np.float32)
    colour = tex * np.asarray(sig.rgb, np.float32)
    return mask.astype(np.float32), colour


def _object_position(sig: ClassSignature, tau: float) -> tuple[float, float]:
    """Top-left corner of the sprite ``tau`` seconds into a segment, following the class's motion."""
    cx, cy = (WIDTH - SPRITE) / 2, (HEIGHT - SPRITE) / 2
    ax, ay = (WIDTH - SPRITE) / 2 - 2, (HEIGHT - SPRITE) / 2 - 2
    if sig.motion == "circle":
        ph = sig.angle + 2 * math.pi * 0.5 * tau
        return cx + 0.8 * ax * math.cos(ph), cy + 0.8 * ay * math.sin(ph)
    if sig.motion == "bounce":
        ph = abs(math.sin(2 * math.pi * 0.7 * tau))
        return cx + 0.6 * ax * math.cos(sig.angle), cy + ay * (1 - 2 * ph) * 0.9
    # linear: sweeps back and forth along the class's direction
    s = math.sin(2 * math.pi * 0.25 * tau)
    return cx + ax * s * math.cos(sig.angle), cy + ay * s * math.sin(sig.angle)


ACTION_TONE_GAIN = 0.5          # an action's tone as mixed over the background ...
ACTION_TONE_RMS = ACTION_TONE_GAIN * math.sqrt(0.5 * (0.6 ** 2 + 0.25 ** 2) / 2)   # ... and its RMS: the two
# partials of _segment_tone, sounding half of each beep


def _segment_tone(sig: ClassSignature, n: int, rate: int) -> np.ndarray:
    """The class's sound for ``n`` samples: a beeping, optionally chirping tone with a harmonic."""
    t = np.arange(n) / rate
    phase_in_beep = (t * sig.beep_hz) % 1.0
    gate = (phase_in_beep < 0.5).astype(np.float32)
    # smooth the gate edges (5 ms) to avoid clicks
    ramp = max(1, int(0.005 * rate))
    gate = np.convolve(gate, np.ones(ramp) / ramp, mode="same")
    freq = sig.tone_hz * (1 + sig.chirp * phase_in_beep)
    ph = 2 * np.pi * np.cumsum(freq) / rate
    return (0.6 * np.sin(ph) + 0.25 * np.sin(2 * ph)) * gate


def _confounder_sound(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """A class-neutral loud sound for ``n`` samples: band-passed noise bursts (no pitch, no class rhythm), at the
    RMS level of an action's tone as mixed (:data:`ACTION_TONE_RMS`)."""
    white = rng.standard_normal(n)
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1 / rate)
    centre = rng.uniform(600, 3000)
    spec *= np.exp(-0.5 * (np.log(np.maximum(f, 1.0) / centre) / 0.5) ** 2)
    noise = np.fft.irfft(spec, n)
    t = np.arange(n) / rate
    bursts = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * t + rng.uniform(0, 6.3))
    sound = noise * bursts
    return (sound * ACTION_TONE_RMS / (np.sqrt(np.mean(sound ** 2)) + 1e-12)).astype(np.float32)


def _noise_patch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A class-neutral moving object: an irregular blob (alpha (S,S)) of grey-ish noise texture (S,S,3)."""
    s = SPRITE
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    u, v = (x - s / 2 + 0.5) / (s / 2), (y - s / 2 + 0.5) / (s / 2)
    angle = np.arctan2(v, u)
    radius = 0.75 + 0.15 * np.sin(3 * angle + rng.uniform(0, 6.3)) + 0.08 * np.sin(5 * angle + rng.uniform(0, 6.3))
    mask = (np.sqrt(u ** 2 + v ** 2) <= radius).astype(np.float32)
    level = rng.choice((rng.uniform(0.02, 0.12), rng.uniform(0.85, 0.97)))     # a flat dark or bright grey, with
    grain = np.kron(rng.uniform(-0.04, 0.04, (s // 4 + 1, s // 4 + 1, 1)), np.ones((4, 4, 1)))[:s, :s]   # grain
    colour = np.clip(level + grain + rng.uniform(-0.03, 0.03, (1, 1, 3)), 0, 1).astype(np.float32)
    return mask, colour


def _background_audio(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """Pink-ish noise plus babble: a few voice-like formant tones with syllable-rate envelopes."""
    white = rng.standard_normal(n).astype(np.float32)
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n, 1 / rate)
    spec /= np.sqrt(np.maximum(f, 20.0))
    pink = np.fft.irfft(spec, n)
    pink *= 0.08 / (pink.std() + 1e-9)
    t = np.arange(n) / rate
    babble = np.zeros(n, np.float32)
    for _ in range(rng.integers(3, 6)):
        f0 = rng.uniform(100, 260)
        vibrato = 1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * t + rng.uniform(0, 6.3))
        ph = 2 * np.pi * np.cumsum(f0 * vibrato) / rate
        voice = sum(np.sin(k * ph) / k for k in range(1, 6))
        syl = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6.3)), 0, None) ** 2
        babble += 0.04 * voice * syl
    return (pink + babble).astype(np.float32)


def plan_videos(n_videos: int, n_classes: int, seconds: tuple[float, float], seed: int,
                test_fraction: float, actions: tuple[int, int] = DEFAULT_ACTIONS,
                action_seconds: tuple[float, float] = DEFAULT_ACTION_SECONDS,
                action_share: float = DEFAULT_ACTION_SHARE,
                confounders: tuple[int, int] = DEFAULT_CONFOUNDERS,
                confounder_kinds: tuple[str, ...] = CONFOUNDER_KINDS) -> list[VideoPlan]:
    """Lay out every video (label, duration, split, segments) from one seeded generator.

    Each video holds ``actions`` (MIN, MAX) action segments, 1-3 distractors (a class drawn from all classes, its
    picture or its sound alone) and ``confounders`` (MIN, MAX) class-neutral segments (a loud noise burst, a moving
    noise patch, or both: one of ``confounder_kinds``, uniformly), each ``action_seconds`` long, shrunk together when they would cover more than
    ``action_share`` of the video. Without confounders the generator draws exactly what it drew before they existed.
    """
    if n_classes < 2:
        raise ValueError("--classes must be at least 2")
    if n_videos < n_classes:
        raise ValueError(f"--videos ({n_videos}) must be at least --classes ({n_classes})")
    lo, hi = seconds
    if not 0 < lo <= hi:
        raise ValueError(f"--seconds MIN:MAX needs 0 < MIN <= MAX, got {lo}:{hi}")
    if lo < 12:
        raise ValueError(f"--seconds MIN must be at least 12 s to hold 2 action segments among background, got {lo}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if not 1 <= actions[0] <= actions[1]:
        raise ValueError(f"--actions MIN:MAX needs 1 <= MIN <= MAX, got {actions[0]}:{actions[1]}")
    if not 0 < action_seconds[0] <= action_seconds[1]:
        raise ValueError(f"--action-seconds MIN:MAX needs 0 < MIN <= MAX, got {action_seconds[0]}:{action_seconds[1]}")
    if not 0 < action_share < 1:
        raise ValueError(f"--action-share must be in (0, 1), got {action_share}")
    if not 0 <= confounders[0] <= confounders[1]:
        raise ValueError(f"--confounders MIN:MAX needs 0 <= MIN <= MAX, got {confounders[0]}:{confounders[1]}")
    if not confounder_kinds or set(confounder_kinds) - set(CONFOUNDER_KINDS):
        raise ValueError(f"--confounder-kinds must name some of {', '.join(CONFOUNDER_KINDS)}, got "
                         f"{', '.join(confounder_kinds) or 'nothing'}")
    rng = np.random.default_rng(seed)
    labels = np.arange(n_videos) % n_classes
    rng.shuffle(labels)
    splits = np.array(["train"] * n_videos, dtype=object)
    for c in range(n_classes):  # stratified: the same test fraction in every class
        idx = np.flatnonzero(labels == c)
        n_test = int(round(len(idx) * test_fraction))
        if test_fraction > 0 and len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)   # every class keeps at least one video on each side
        splits[rng.permutation(idx)[:n_test]] = "test"
    plans = []
    for i in range(n_videos):
        duration = float(np.round(rng.uniform(lo, hi), 2))
        plan = VideoPlan(f"synth{i:05d}", int(labels[i]), duration, str(splits[i]), int(rng.integers(2**31)))
        n_act = int(rng.integers(actions[0], actions[1] + 1))
        n_dis = int(rng.integers(1, 4))
        n_con = int(rng.integers(confounders[0], confounders[1] + 1)) if confounders[1] > 0 else 0
        lengths = rng.uniform(*action_seconds, n_act + n_dis + n_con)
        # never fill more than action_share of the video with segments (sparse actions: a third)
        scale = min(1.0, duration * action_share / lengths.sum())
        lengths *= scale
        free = duration - lengths.sum() - 0.5
        gaps = rng.dirichlet(np.ones(len(lengths) + 1)) * free
        order = rng.permutation(len(lengths))
        t = 0.25 + gaps[0]
        for k, j in enumerate(order):
            seg_len = float(lengths[j])
            start, end = round(t, 2), round(t + seg_len, 2)
            if j < n_act:
                plan.actions.append(Segment(start, end, plan.label))
            elif j < n_act + n_dis:
                other = int(rng.integers(n_classes))
                visual_only = bool(rng.integers(2))
                plan.distractors.append(Segment(start, end, other, visual=visual_only, audio=not visual_only))
            else:
                kind = confounder_kinds[int(rng.integers(len(confounder_kinds)))]
                plan.confounders.append(Segment(start, end, -1, visual=kind != "audio", audio=kind != "visual"))
            t += seg_len + gaps[k + 1]
        plans.append(plan)
    return plans


def render_audio(plan: VideoPlan, sigs: list[ClassSignature]) -> np.ndarray:
    """The video's audio track (stereo, float32 in [-1, 1])."""
    rng = np.random.default_rng(plan.seed + 1)
    n = int(round(plan.duration * AUDIO_RATE))
    mono = _background_audio(rng, n, AUDIO_RATE)
    for seg in plan.actions + plan.distractors:
        if not seg.audio:
            continue
        a, b = int(seg.start * AUDIO_RATE), min(n, int(seg.end * AUDIO_RATE))
        mono[a:b] += ACTION_TONE_GAIN * _segment_tone(sigs[seg.cls], b - a, AUDIO_RATE)
    crng = np.random.default_rng(plan.seed + 2)        # confounders draw apart: the rest stays as without them
    for seg in plan.confounders:
        a, b = int(seg.start * AUDIO_RATE), min(n, int(seg.end * AUDIO_RATE))
        sound = _confounder_sound(crng, b - a, AUDIO_RATE)   # drawn for every confounder: kinds keep their streams
        if seg.audio:
            mono[a:b] += sound
    mono = np.clip(mono, -1, 1)
    return np.stack([mono, 0.9 * mono], axis=1)


def iter_frames(plan: VideoPlan, sigs: list[ClassSignature]):
    """Yield the video's RGB frames (H,W,3 uint8): a slowly drifting textured background plus the segments' objects."""
    rng = np.random.default_rng(plan.seed)
    # a smooth random texture larger than the frame; the camera drifts across it
    pad = 64
    big_h, big_w = HEIGHT + 2 * pad, WIDTH + 2 * pad
    coarse = rng.random((big_h // 16 + 2, big_w // 16 + 2, 3)).astype(np.float32)
    tex = np.kron(coarse, np.ones((16, 16, 1), np.float32))[:big_h, :big_w]
    k = np.ones(9, np.float32) / 9
    for axis in (0, 1):
        tex = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), axis, tex)
    tint = rng.uniform(0.3, 0.6, 3).astype(np.float32)
    tex = 0.25 + 0.35 * tex * tint / tint.mean()
    drift = rng.uniform(-1, 1, 2) * pad * 0.9
    sprites = {}
    crng = np.random.default_rng(plan.seed + 3)
    patches = [(seg, _noise_patch(crng), ClassSignature(-1, "confounder", "blob", (0.5, 0.5, 0.5), 0,
                                                        str(crng.choice(("linear", "circle", "bounce"))),
                                                        float(crng.uniform(0, 2 * math.pi)), 0.0, 1.0, 0.0))
               for seg in plan.confounders if seg.visual]
    n_frames = int(round(plan.duration * FPS))
    for f in range(n_frames):
        t = f / FPS
        frac = 0.5 - 0.5 * math.cos(2 * math.pi * t / max(plan.duration, 1e-6))  # slow drift there and back
        oy, ox = int(pad + drift[0] * frac), int(pad + drift[1] * frac)
        frame = tex[oy:oy + HEIGHT, ox:ox + WIDTH].copy()
        frame += rng.normal(0, 0.02, frame.shape).astype(np.float32)
        for seg in plan.actions + plan.distractors:
            if seg.visual and seg.start <= t < seg.end:
                sig = sigs[seg.cls]
                if seg.cls not in sprites:
                    sprites[seg.cls] = _sprite(sig)
                mask, colour = sprites[seg.cls]
                x, y = _object_position(sig, t - seg.start)
                x, y = int(round(x)), int(round(y))
                region = frame[y:y + SPRITE, x:x + SPRITE]
                m = mask[: region.shape[0], : region.shape[1], None]
                region[:] = region * (1 - m) + colour[: region.shape[0], : region.shape[1]] * m
        for seg, (mask, colour), path in patches:
            if seg.start <= t < seg.end:
                x, y = _object_position(path, t - seg.start)
                x, y = int(round(x)), int(round(y))
                region = frame[y:y + SPRITE, x:x + SPRITE]
                m = mask[: region.shape[0], : region.shape[1], None]
                region[:] = region * (1 - m) + colour[: region.shape[0], : region.shape[1]] * m
        yield (np.clip(frame, 0, 1) * 255).astype(np.uint8)


def _write_wav(path: str, stereo: np.ndarray) -> None:
    pcm = (np.clip(stereo, -1, 1) * 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(stereo.shape[1])
        w.setsampwidth(2)
        w.setframerate(AUDIO_RATE)
        w.writeframes(pcm.tobytes())


def encode_video(plan: VideoPlan, sigs: list[ClassSignature], out_path: Path) -> None:
    """Render ``plan`` and encode it as an H.264/AAC mp4 at ``out_path`` (written atomically)."""
    tmp_mp4 = out_path.with_name(out_path.stem + ".partial.mp4")
    with tempfile.TemporaryDirectory() as td:
        wav = os.path.join(td, "a.wav")
        _write_wav(wav, render_audio(plan, sigs))
        video_in = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{WIDTH}x{HEIGHT}", r=FPS)
        audio_in = ffmpeg.input(wav)
        cmd = (
            ffmpeg.output(video_in, audio_in, str(tmp_mp4), vcodec="libx264", preset="veryfast", crf=26,
                          pix_fmt="yuv420p", g=60, acodec="aac", audio_bitrate="64k", movflags="+faststart",
                          shortest=None)
            .global_args("-hide_banner", "-loglevel", "error", "-nostdin")
            .overwrite_output()
            .compile(cmd=ffmpeg_exe())
        )
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for frame in iter_frames(plan, sigs):
                proc.stdin.write(frame.tobytes())
        finally:
            proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace")
            rc = proc.wait()
        if rc != 0:
            tmp_mp4.unlink(missing_ok=True)
            raise RuntimeError(f"ffmpeg failed encoding {out_path.name}: {err.strip()[-500:]}")
    os.replace(tmp_mp4, out_path)


def _segments_str(segs: list[Segment]) -> str:
    return ";".join(f"{s.start:.2f}-{s.end:.2f}" for s in segs)


def _distractors_str(segs: list[Segment], sigs: list[ClassSignature]) -> str:
    return ";".join(f"{'visual' if s.visual else 'audio'}:{sigs[s.cls].name}:{s.start:.2f}-{s.end:.2f}" for s in segs)


def _confounders_str(segs: list[Segment]) -> str:
    return ";".join(f"{s.kind}:{s.start:.2f}-{s.end:.2f}" for s in segs)


def generate_synthetic(out: str | Path, n_videos: int = DEFAULT_VIDEOS, n_classes: int = DEFAULT_CLASSES,
                       seconds: tuple[float, float] = DEFAULT_SECONDS, seed: int = 0, test_fraction: float = 0.25,
                       progress: Callable[[int, int], None] | None = None, jobs: int = 1,
                       actions: tuple[int, int] = DEFAULT_ACTIONS,
                       action_seconds: tuple[float, float] = DEFAULT_ACTION_SECONDS,
                       action_share: float = DEFAULT_ACTION_SHARE,
                       confounders: tuple[int, int] = DEFAULT_CONFOUNDERS,
                       confounder_kinds: tuple[str, ...] = CONFOUNDER_KINDS) -> Path:
    """Generate the synthetic dataset into ``out`` and return the path of its ``manifest.csv``.

    Videos already present (from an interrupted run with the same settings) are kept, so re-running resumes.
    ``jobs`` videos are encoded at once in separate processes; each video depends only on its plan, so the files are
    the same for any ``jobs``.
    """
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    sigs = class_signatures(n_classes)
    plans = plan_videos(n_videos, n_classes, seconds, seed, test_fraction, actions, action_seconds, action_share,
                        confounders, confounder_kinds)
    todo = [p for p in plans if not (out / f"videos/{p.video_id}.mp4").exists()]
    done = len(plans) - len(todo)
    if progress and done:
        progress(done, len(plans))
    if jobs > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=min(jobs, len(todo))) as pool:
            futures = [pool.submit(encode_video, p, sigs, out / f"videos/{p.video_id}.mp4") for p in todo]
            for fut in as_completed(futures):
                fut.result()
                done += 1
                if progress:
                    progress(done, len(plans))
    else:
        for p in todo:
            encode_video(p, sigs, out / f"videos/{p.video_id}.mp4")
            done += 1
            if progress:
                progress(done, len(plans))
    rows = []
    for plan in plans:
        rel = f"videos/{plan.video_id}.mp4"
        rows.append({
            "video_id": plan.video_id, "path": rel, "label": sigs[plan.label].name, "split": plan.split,
            "duration": plan.duration, "segments": _segments_str(plan.actions),
            "distractors": _distractors_str(plan.distractors, sigs),
            **({"confounders": _confounders_str(plan.confounders)} if confounders[1] > 0 else {}),
        })
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    (out / "classes.txt").write_text("".join(s.name + "\n" for s in sigs))
    return manifest

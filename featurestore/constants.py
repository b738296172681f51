"""The facts of the data, each in one place: decoding geometry, what a step is, the audio front end, and which
arrays the store holds. Every other module imports them from here (feature widths come from the models that
produce them).

Steps follow Listen to Look: a step starts every ``STEP_FRAMES`` frames (at ``FPS``) while frames remain. Step k,
starting at frame s = 16k, has
  * the image input: frame s (``CROP`` x ``CROP`` RGB),
  * the audio input: ``WINDOW_SECONDS`` of ``SAMPLE_RATE`` audio from s / FPS seconds, as an ``N_MELS`` x
    ``MEL_FRAMES`` log-mel,
  * the teacher input: ``CLIP_FRAMES`` frames s, s + ``CLIP_STRIDE``, ..., spanning ``CLIP_SPAN`` frames.
"""
from __future__ import annotations

from typing import Iterable

from models.widths import AUDIO_DIM, DESCRIPTOR_DIM, FUSED_DIM, IMAGE_DIM, MAP_DIM, MAP_SIZE  # noqa: F401 - e^G's map

# --- decoding ------------------------------------------------------------------------------------------------------
FPS = 30                 # frames are resampled to this rate
SHORT_SIDE = 128         # the short side is scaled to this ...
CROP = 112               # ... then centre-cropped to CROP x CROP
SAMPLE_RATE = 16000      # mono audio rate

# --- steps and clips -----------------------------------------------------------------------------------------------
STEP_FRAMES = 16         # a new image-audio pair every 16 frames
CLIP_FRAMES = 16         # frames in the teacher's clip
CLIP_STRIDE = 2          # ... taking every other frame, so a clip spans 31 frames (~1 s)
CLIP_SPAN = (CLIP_FRAMES - 1) * CLIP_STRIDE + 1

# --- audio front end (log-mel) -------------------------------------------------------------------------------------
WINDOW_SECONDS = 1.0
N_FFT = 400
HOP = 160
N_MELS = 40
MEL_FRAMES = int(SAMPLE_RATE * WINDOW_SECONDS) // HOP + 1     # 101: torchaudio's centred STFT
LOG_EPS = 1e-6

# --- stored arrays -------------------------------------------------------------------------------------------------
FEATURE_DIMS = {"image": IMAGE_DIM, "audio": AUDIO_DIM, "fused": FUSED_DIM, "r2p1d": DESCRIPTOR_DIM}
DESCRIPTORS = tuple(FEATURE_DIMS)            # what ``--descriptors`` may name
DESCRIPTOR_ARRAYS = {"image": ("image",), "audio": ("audio",), "fused": ("fused",),
                     "r2p1d": ("r2p1d", "r2p1d_logits")}          # the arrays each descriptor brings
STUDENT_DESCRIPTORS = ("image", "audio", "fused")
KEPT_INPUTS = ("frames", "mel")              # ``--keep-inputs``: each step's first frame and log-mel
KEPT_CLIPS = ("clips",)                      # ``--keep-clips``: each step's teacher clip
KEPT_MAPS = ("image_map",)   # ``--spatial-map``: each step's e^G (N, MAP_SIZE, MAP_SIZE, MAP_DIM) float16, a by-product
                             # of the ``image`` descriptor (z^I = proj(mean of e^G)); a kept input, never packed
SPATIAL_INPUTS = ("frames", "image_map")     # what AVGN's spatial glance reads: the frame it crops and e^G

# --- signal energy: free previews from the single decode, no model (the controls every learned preview must beat) ---
LOUDNESS_FLOOR_DB = -100.0   # ``loudness`` (N,) float32: RMS level in dBFS of the step's audio window (the log-mel's
                             # WINDOW_SECONDS from the step's start), floored here; a video without audio is all floor
MOTION_GRID = 8              # ``motion`` (N, MOTION_DIM) float16: mean |frame difference| (pixel values in [0, 1]) per
MOTION_DIM = 3 * MOTION_GRID * MOTION_GRID    # RGB channel per cell of a MOTION_GRID x MOTION_GRID grid over the
                             # crop, averaged over the differences of the step's STEP_FRAMES frames; (c, y, x) order
SPECTRUM_DIM = N_MELS        # ``spectrum`` (N, SPECTRUM_DIM) float16: the step's log-mel (its WINDOW_SECONDS window)
                             # averaged over time, one value per mel band; a video without audio is all log(LOG_EPS)
SIGNALS = ("loudness", "motion", "spectrum")  # stored by every new store's extraction (root attribute ``signals``)
SIGNAL_WIDTHS = {"motion": MOTION_DIM, "spectrum": SPECTRUM_DIM}   # row widths of the signals with rows (loudness: one
                             # float32 value per step)


ROW_WIDTHS = {**FEATURE_DIMS, **SIGNAL_WIDTHS}   # the row width of every stored per-step array with rows

# --- dimension names (zarr v3 ``dimension_names``, what xarray reads) ----------------------------------------------
# xarray opens a group as one Dataset, where a dimension name has one size: arrays of different row widths name
# their row dimension apart (``image_feature``, ``motion_cell``, ...); dimensions equal by construction share a name
# (``mel_band``: the spectrum's width is N_MELS; ``height``/``width``/``channel``: frames and clips are CROP x CROP
# RGB). No dimension is named like an array (xarray would take array ``mel`` for the coordinate of a dimension mel).
STEP_DIM = "step"            # the first dimension of every array of a video group: one entry per step
ROW_DIM = "row"              # ... of a packed view's arrays: the steps of every video of the split, one after another
OFFSET_DIM = "offset"        # the packed view's ``offsets`` (V + 1,): video i holds rows offsets[i]:offsets[i + 1]
DIMENSION_NAMES = {          # the dimensions after the first, per stored array
    "t": (), "loudness": (),
    "motion": ("motion_cell",), "spectrum": ("mel_band",),
    "image": ("image_feature",), "audio": ("audio_feature",), "fused": ("fused_feature",),
    "r2p1d": ("r2p1d_feature",), "r2p1d_logits": ("r2p1d_class",),
    "frames": ("height", "width", "channel"), "mel": ("mel_band", "mel_frame"),
    "image_map": ("map_y", "map_x", "map_feature"),
    "clips": ("clip_frame", "height", "width", "channel"),
}


def dimension_names(name: str, ndim: int, first: str = STEP_DIM) -> tuple[str, ...]:
    """The zarr ``dimension_names`` of stored array ``name`` with ``ndim`` dimensions: ``first`` (``step`` in a video
    group, ``row`` in a packed view), then the array's own (:data:`DIMENSION_NAMES`). An array not listed there, or
    of another rank, gets ``<name>_dim<i>``, which no other array shares."""
    rest = DIMENSION_NAMES.get(name)
    if rest is None or len(rest) != ndim - 1:
        rest = tuple(f"{name}_dim{i}" for i in range(1, ndim))
    return (first, *rest)[:ndim]


def array_source(name: str) -> str:
    """What produces a stored array: "student" (its descriptors and ``image_map``), "teacher", "decode" (kept inputs)
    or "" (the step times ``t``)."""
    if name in STUDENT_DESCRIPTORS + KEPT_MAPS:
        return "student"
    if name in DESCRIPTOR_ARRAYS["r2p1d"]:
        return "teacher"
    return "decode" if name in KEPT_INPUTS + KEPT_CLIPS + SIGNALS else ""


def stored_arrays(descriptors: Iterable[str], inputs: Iterable[str] = (), signals: Iterable[str] = ()) -> list[str]:
    """Every array a video of a store with these descriptors, kept inputs and signal arrays holds, in store order."""
    descriptors = set(descriptors)
    return (["t"] + list(signals) + [a for d in DESCRIPTORS if d in descriptors for a in DESCRIPTOR_ARRAYS[d]]
            + list(inputs))


def extraction_params() -> dict:
    """The decoding and front-end parameters recorded in every video's provenance."""
    return {"fps": FPS, "short_side": SHORT_SIDE, "crop": CROP, "step_frames": STEP_FRAMES, "clip_frames": CLIP_FRAMES,
            "clip_stride": CLIP_STRIDE, "sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop": HOP, "n_mels": N_MELS,
            "window": "hann", "log_eps": LOG_EPS}

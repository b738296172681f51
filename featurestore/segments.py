"""Ground-truth action segments: the manifest's ``start-end`` text (seconds, joined by ``;``), parsed, validated and
fitted to a video's decoded duration."""
from __future__ import annotations

import math
import re

from featurestore.constants import FPS, STEP_FRAMES
from featurestore.text import printable

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_SEGMENT = re.compile(rf"^\s*({_NUMBER})\s*-\s*({_NUMBER})\s*$")


def parse_segments(text: str) -> list[tuple[float, float]]:
    """``"1.5-3.0;10-12.25"`` -> ``[(1.5, 3.0), (10.0, 12.25)]``; empty text gives ``[]``.

    Each segment is two finite numbers of seconds with ``0 <= start < end``; anything else (``1-inf``, ``-1-2``,
    ``nan-3``) raises ValueError naming the segment."""
    out = []
    for part in str(text).split(";"):
        part = part.strip()
        if not part:
            continue
        m = _SEGMENT.match(part)
        if not m:
            raise ValueError(f"segment '{printable(part, 60)}' is not start-end in seconds (finite numbers, e.g. 1.5-3)")
        s, e = float(m[1]), float(m[2])
        if not (math.isfinite(s) and math.isfinite(e) and 0 <= s < e):
            raise ValueError(f"segment '{printable(part, 60)}' needs 0 <= start < end")
        out.append((s, e))
    return out


def clip_segments(segments: list[tuple[float, float]], duration: float,
                  tolerance: float = 0.0) -> tuple[list[tuple[float, float]], list[str]]:
    """``segments`` within a video of ``duration`` seconds: ends past it cut to it, segments starting at or after it
    dropped; returns (kept, notes): a note for each segment dropped and each end cut by more than ``tolerance``
    seconds (annotations often end a fraction past the decoded end; cutting them changes no step)."""
    kept, notes = [], []
    for s, e in segments:
        if s >= duration:
            notes.append(f"segment {s:g}-{e:g} starts after the video's end ({duration:g} s): dropped")
        elif e > duration:
            kept.append((s, duration))
            if e - duration > tolerance:
                notes.append(f"segment {s:g}-{e:g} ends after the video's end ({duration:g} s): cut to "
                             f"{s:g}-{duration:g}")
        else:
            kept.append((s, e))
    return kept, notes


def format_segments(segments: list[tuple[float, float]]) -> str:
    """The manifest's text of ``segments``: ``start-end`` joined by ``;`` (inverse of :func:`parse_segments`)."""
    def num(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else repr(float(x))
    return ";".join(f"{num(s)}-{num(e)}" for s, e in segments)


def fit_segments(text: str, duration: float) -> tuple[str, list[str]]:
    """A video's segments text as stored for its decoded ``duration`` (seconds): ``text`` itself when every
    segment lies within the video, else the :func:`clip_segments` result; returns (text, notes), ends cut by up to
    one step's time without a note."""
    segments = parse_segments(text)
    kept, notes = clip_segments(segments, duration, tolerance=STEP_FRAMES / FPS)
    return (text if kept == segments else format_segments(kept)), notes

"""``fs show``: what each method chose in one video, and why (Listen to Look, Fig. 8).

One figure per video: the timeline of its steps with the ground-truth action segments (and the synthetic set's
distractor segments), each method's chosen steps on that timeline with its prediction, the skimmer's attention per
skimming step and its modality scores s^I / s^A, the rankers' saliency, and a contact sheet of the frames at the
chosen steps, each captioned with its time and whether it falls inside an action segment; a method with a spatial
glance (AVGN §3.3: ``details["patches"]``) has the patch it cropped drawn as a box on each of those steps' frames.

Frames come from the store's kept ``frames`` when it has them; otherwise from the video file, one short seek per
shown frame (display is the one place outside extraction that opens a video, and only for the frames it shows).
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from featurestore.constants import FPS, STEP_FRAMES
from featurestore.decode import DecodeError, frames_at
from featurestore.store import FeatureStore, StoreError, VideoFeatures
from manifests.schema import parse_confounders, parse_distractors, parse_segments
from models.selection import BUDGET, Selection, Selector
from pipelines.data import action_mask
from pipelines.methods import (METHODS, BenchContext, bench_arrays, installed_methods, is_module_spec,
                               resolve_method)

log = logging.getLogger(__name__)

SHOW_METHODS = ("UNIFORM", "AV-ENERGY", "SAMPLERS", "AVGN", "AVGN-SPATIAL", "SKIM")
"""The default rows of a figure: a blind baseline, the free AV-energy control, the best SCSampler combination, AVGN
(and, on a store with the spatial glance's inputs, AVGN with its patches drawn) and the skimmer."""

PREFERRED_ROWS = {"SAMPLERS": "SCS AV-", "AVGN": "AVGN (k=", "AVGN-SPATIAL": "AVGN spatial AESPA + pi (k="}
"""Of a method's many rows, the ones a figure may show: SCSampler's audio-visual combinations, AVGN without
ablations."""

DEFAULT_ROWS = {"SAMPLERS": "SCS AV-union-list", "AVGN": f"AVGN (k={BUDGET}, T_G=all)",
                "AVGN-SPATIAL": f"AVGN spatial AESPA + pi (k={BUDGET}, T_G=all)"}
"""The row shown when no bench table ranks them: SCSampler's best combination in its Table 7 (AV-union-list,
K' = 8), AVGN at the full budget."""

FAMILIES = {"SAMPLERS": "SCS ", "AVGN": "AVGN", "AVGN-SPATIAL": "AVGN spatial ", "SKIM": "IMGAUD-SKIM ("}
"""The name prefix of every row a many-row method builds (a one-row method's row is named after the method)."""

PATCH_COLOUR = "#ffff00"   # the spatial glance's patch boxes on the contact sheet (a colour nothing else draws)
TILE_COLUMNS = BUDGET      # frame tiles per contact-sheet row ...
MAX_TILES = 3 * BUDGET     # ... and at most this many per method (DENSE chooses every step); the title says so
_SKIM_OPTIONS = re.compile(r"\(s=(\d+), T=(\d+)\)$")


@dataclass
class ShownMethod:
    """One method's row of a figure."""

    name: str
    steps: list[int]
    predicted: str
    true: str
    confidence: float

    @property
    def correct(self) -> bool:
        return self.predicted == self.true


@dataclass
class Shown:
    """What a figure drew, read back from the figure itself (for the caller's summary and for tests)."""

    path: Path
    video_id: str
    size: tuple[int, int]                          # (width, height) in pixels of the written PNG
    methods: list[ShownMethod]
    tiles: int                                     # frame tiles drawn
    captions: list[str]                            # their captions, method by method
    tile_images: list[np.ndarray]                  # their pixels, in the same order
    segments: list[tuple[str, float, float]]       # (kind, start, end) of the spans on the timeline
    frames: str                                    # where the frames came from: "store", "video", or why none
    attention: dict[str, tuple[int, int]] = field(default_factory=dict)   # method -> heatmap (skim steps, steps)
    modality: dict[str, int] = field(default_factory=dict)                # method -> s^I / s^A bars drawn
    saliency: dict[str, list[str]] = field(default_factory=dict)          # method -> its saliency curves' labels
    notes: list[str] = field(default_factory=list)
    patches: dict[str, list[tuple[int, tuple[float, float, float, float]]]] = field(default_factory=dict)
    """method -> (step, (x0, y0, x1, y1)) of each patch box drawn, in pixel edges of the frame (0, 0: its top-left
    corner), read back from the figure."""


def patch_boxes(patches: dict, width: int, height: int) -> dict[int, tuple[float, float, float, float]]:
    """{step: (x0, y0, x1, y1)}: each cropped step's patch as a box in pixel edges of a ``width`` x ``height`` frame
    (0, 0 is the frame's top-left corner, (width, height) its bottom-right), from a selection's ``details["patches"]``
    (``steps``; ``centres`` (x, y) in [0, 1] frame coordinates; ``size``, the patch side as a fraction of the frame
    side). The box is not clipped: a patch reaching past the frame is drawn so."""
    size = float(patches["size"])
    centres = np.asarray(patches["centres"], float).reshape(-1, 2)
    boxes = {}
    for step, (x, y) in zip(np.asarray(patches["steps"], int).reshape(-1), centres):
        half_w, half_h = size * width / 2, size * height / 2
        boxes[int(step)] = (x * width - half_w, y * height - half_h, x * width + half_w, y * height + half_h)
    return boxes


def family(key: str, selectors: list[Selector]) -> list[Selector]:
    """The rows of ``selectors`` that method ``key`` builds (by name: see :data:`FAMILIES`)."""
    prefix = FAMILIES.get(key)
    return [r for r in selectors if (r.name.startswith(prefix) if prefix else r.name == key)]


def pick_row(key: str, rows: list[Selector], table: pd.DataFrame | None = None) -> Selector | None:
    """One of a method's rows for display: among its preferred rows, the best top-1 of ``table`` (a bench.csv; ties
    go to the better mAP, then to the default row), else its default row, else its first."""
    if not rows:
        return None
    preferred = [r for r in rows if r.name.startswith(PREFERRED_ROWS.get(key, ""))] or rows
    default = DEFAULT_ROWS.get(key)

    def is_default(r: Selector) -> bool:
        return bool(default) and r.name.startswith(default)

    if table is not None and len(table):
        scores = {m: (t, a) for m, t, a in zip(table["method"], table["top1"], table["mAP"])}
        ranked = [r for r in preferred if r.name in scores]
        if ranked:
            return max(ranked, key=lambda r: (*scores[r.name], is_default(r)))
    return next((r for r in preferred if is_default(r)), preferred[0])


def show_rows(selectors: list[Selector], table: pd.DataFrame | None = None,
              methods: tuple[str, ...] = SHOW_METHODS) -> list[Selector]:
    """One row per method key out of already built ``selectors`` (the bench's), as :func:`pick_row` chooses."""
    rows = [pick_row(key, family(key, selectors), table) for key in methods]
    return [r for r in rows if r is not None]


def named_row(ctx: BenchContext, name: str) -> Selector:
    """The bench row called exactly ``name`` (a skimmer row at the s and T its name gives)."""
    options = _SKIM_OPTIONS.search(name)
    quiet = replace(ctx, say=lambda message: None)         # every builder runs: their skip lines would be noise
    if options:
        quiet = replace(quiet, subsample=int(options[1]), steps=int(options[2]))
    for build in METHODS.values():
        for row in build(quiet):
            if row.name == name:
                return row
    raise ValueError(f"{name!r} is neither a bench method ({', '.join(METHODS)}), an installed one, a plug-in "
                     f"builder pkg.module:attr, nor the name of a bench row whose checkpoint is trained")


def show_selectors(ctx: BenchContext, methods: tuple[str, ...] = SHOW_METHODS,
                   table: pd.DataFrame | None = None) -> list[Selector]:
    """One selector per method key (a method as ``fs bench --methods`` takes it: a registry name, an installed
    entry point's or ``pkg.module:attr``, each giving the row :func:`pick_row` chooses) or exact bench row name.
    Methods without a checkpoint are skipped (the context says how to train them)."""
    out = []
    installed = installed_methods()
    for key in methods:
        plugin = key in installed or is_module_spec(key)
        row = (pick_row(key, resolve_method(key)(ctx), table) if key in METHODS or plugin
               else named_row(ctx, key))
        if row is not None:
            out.append(row)
    return out


def segment_spans(attrs: dict) -> list[tuple[str, float, float, str]]:
    """(kind, start, end, label) of the annotated spans: "action" segments of the video's class, the synthetic
    set's "distractor" segments (a class's picture or sound alone) and "confounder" segments (class-neutral noise
    bursts and moving patches)."""
    spans = [("action", s, e, str(attrs.get("label", ""))) for s, e in parse_segments(attrs.get("segments", "") or "")]
    for modality, cls, s, e in parse_distractors(attrs.get("distractors", "") or ""):
        spans.append(("distractor", s, e, f"{cls} ({modality} only)"))
    for kind, s, e in parse_confounders(attrs.get("confounders", "") or ""):
        spans.append(("confounder", s, e, f"neutral {kind}"))
    return spans


def step_places(video: VideoFeatures, spans: list[tuple[str, float, float, str]]) -> list[str]:
    """Each step's place, by where it starts (the bench's segment_hit rule, :func:`~pipelines.data.action_mask`):
    in an action segment, in a distractor, elsewhere, or unknown in a video without annotated segments."""
    inside = action_mask(video)
    t = np.asarray(video.arrays["t"], float)
    if inside is None:
        return ["not annotated"] * len(t)
    distractor, confounder = np.zeros(len(t), bool), np.zeros(len(t), bool)
    for kind, s, e, _ in spans:
        if kind in ("distractor", "confounder"):
            (distractor if kind == "distractor" else confounder)[(t >= s) & (t < e)] = True
    return ["in action" if a else "in a distractor" if d else "in a confounder" if c else "not in action"
            for a, d, c in zip(inside, distractor, confounder)]


def step_frames(store: FeatureStore, video: VideoFeatures, steps: list[int]) -> tuple[dict[int, np.ndarray], str]:
    """The frames at ``steps`` (uint8 H x W x 3, by step) and where they came from; no frames and the reason when
    the store kept none and the video file cannot be read."""
    if not steps:
        return {}, "no steps chosen"
    if "frames" in store.attrs.get("inputs", []):
        frames = store.read_video(video.video_id, ["frames"]).arrays["frames"]
        return {s: frames[s] for s in steps}, "store"
    path = str(video.attrs.get("path", ""))
    if path and not os.path.isabs(path):      # older stores recorded paths relative to an unrecorded cwd
        return {}, (f"frames not shown: the store recorded the video file as the relative path {path}, relative to "
                    f"the directory an older fs extract ran in, which the store does not say; a file of that name "
                    f"here may be another video (re-extract, or fs extract --keep-inputs, to show frames)")
    if not path or not os.path.exists(path):
        return {}, (f"frames not shown: the video file {path or '(no path recorded)'} is not where extraction read "
                    f"it (moved or deleted since), and the store kept no frames (fs extract --keep-inputs)")
    t = np.asarray(video.arrays["t"], float)
    try:
        read = frames_at(path, [float(t[s]) for s in steps])
    except DecodeError as e:
        return {}, f"frames not shown: {e}"
    return dict(zip(steps, read)), "video"


def render_video(store: FeatureStore, video: VideoFeatures, selections: list[tuple[str, Selection]],
                 path: Path, subtitle: str = "") -> Shown:
    """Draw one video's figure for the given (method name, selection) rows and write it to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.image import imread
    from matplotlib.patches import Rectangle

    plain = {"parse_math": False}          # names and ids are text, never mathtext ("$" in an id)
    classes = list(store.attrs.get("classes", []))
    t = np.asarray(video.arrays["t"], float)
    n = len(t)
    step_seconds = STEP_FRAMES / FPS
    duration = float(video.attrs.get("duration") or (t[-1] + step_seconds if n else 0.0))
    end = max(duration, t[-1] + step_seconds if n else 0.0)
    spans = segment_spans(video.attrs)
    places = step_places(video, spans)
    rows = [ShownMethod(name, [int(s) for s in sel.steps], classes[int(np.argmax(sel.scores))],
                        str(video.attrs.get("label")), float(np.max(sel.scores))) for name, sel in selections]
    frames, source = step_frames(store, video, sorted({s for r in rows for s in r.steps[:MAX_TILES]}))

    # one block per method: its timeline, (the skimmer's attention), its contact sheet
    heights = [1.1]
    for (name, sel), row in zip(selections, rows):
        heights.append(1.0)
        if _has_attention(sel):
            heights.append(0.25 * len(sel.details["attention"]) + 0.6)
        sheet_rows = max(1, math.ceil(min(len(row.steps), MAX_TILES) / TILE_COLUMNS))
        heights.append(1.55 * sheet_rows if frames else 0.35)
    fig = plt.figure(figsize=(15, sum(heights) + 1.0), dpi=100)
    grid = fig.add_gridspec(len(heights), 2, height_ratios=heights, width_ratios=[5, 1.2], hspace=0.9, wspace=0.04,
                            left=0.06, right=0.98, top=1 - 0.8 / (sum(heights) + 1.0), bottom=0.3 / sum(heights))
    fig.suptitle(f"{video.video_id}: true class {video.attrs.get('label')}, {duration:.1f} s, {n} steps"
                 + (f"  ({subtitle})" if subtitle else ""), fontsize=12, x=0.06, ha="left", **plain)

    def timeline(ax, title: str) -> None:
        for kind, s, e, label in spans:
            ax.axvspan(s, e, color={"action": "C2", "distractor": "C1"}.get(kind, "C7"),
                       alpha=0.25 if kind == "action" else 0.18,
                       hatch=None if kind == "action" else "//", gid=f"segment:{kind}", lw=0)
        ax.set_xlim(0, end)
        ax.set_yticks([])
        ax.set_title(title, fontsize=9, loc="left", **plain)
        ax.tick_params(labelsize=7)

    ax = fig.add_subplot(grid[0, 0])
    timeline(ax, "timeline: green = action segments of the true class, hatched orange = distractors "
                 "(a class's picture or sound alone), hatched grey = neutral confounders; ticks = step starts"
                 if spans else
                 "timeline (this video has no annotated segments); ticks = step starts")
    ax.vlines(t, 0, 0.25, color="k", lw=0.4)
    for i, (kind, s, e, label) in enumerate(sp for sp in spans if sp[0] != "action"):
        ax.text((s + e) / 2, 0.45 + 0.3 * (i % 2), label, ha="center", va="center", fontsize=6,
                color="C1" if kind == "distractor" else "C7", **plain)
    ax.set_ylim(0, 1)
    ax.set_xlabel("seconds", fontsize=7)
    legend = fig.add_subplot(grid[0, 1])
    legend.axis("off")
    legend.text(0, 0.5, f"{len(rows)} methods\nframes: {source if source in ('store', 'video') else 'none'}",
                fontsize=8, va="center")
    notes = [] if source in ("store", "video") else [source]
    r = 1                                   # the grid row being drawn
    for (name, sel), row in zip(selections, rows):
        ax = fig.add_subplot(grid[r, 0])
        verdict = "right" if row.correct else "WRONG"
        shown_steps = row.steps[:MAX_TILES]
        timeline(ax, f"{name}: chose {len(row.steps)} steps" + (f" (the first {MAX_TILES} shown below)"
                                                                if len(row.steps) > MAX_TILES else "")
                 + ("; yellow boxes: the patch its spatial glance cropped" if "patches" in sel.details else ""))
        for label, (steps_scored, values) in sel.details.get("saliency", {}).items():
            values, at = np.asarray(values, float), np.asarray(steps_scored, int)
            span = np.ptp(values) if len(values) else 0.0
            values = (values - values.min()) / span if span > 0 else np.full(len(values), 0.5)
            by_time = np.argsort(at, kind="stable")         # AVGN scores its steps in glance order
            ax.plot(t[at[by_time]], 0.1 + 0.8 * values[by_time], lw=0.8, alpha=0.7, label=f"saliency ({label})",
                    gid=f"saliency:{label}")
        if sel.details.get("saliency"):
            ax.legend(fontsize=6, loc="upper right", frameon=False, ncol=3)
        for order, s in enumerate(row.steps, start=1):
            ax.plot(t[s], 0.5, "v", color="C3", ms=7)
            ax.text(t[s], 0.82, str(order), ha="center", fontsize=7, color="C3")
        ax.set_ylim(0, 1.1)
        ax.set_gid(f"choice:{name}")
        text = fig.add_subplot(grid[r, 1])
        text.axis("off")
        text.text(0, 0.5, f"predicted {row.predicted} ({row.confidence:.2f})\ntrue {row.true}\n{verdict}",
                  fontsize=8, va="center", color="C2" if row.correct else "C3", gid="prediction", **plain)
        r += 1
        if _has_attention(sel):
            att = np.asarray(sel.details["attention"], float)
            mod = np.asarray(sel.details.get("modality", np.zeros((0, 2))), float)
            ax = fig.add_subplot(grid[r, 0])
            half = step_seconds / 2                          # each cell centred on its step's start, like the marks
            ax.imshow(att, aspect="auto", cmap="magma", interpolation="nearest",
                      extent=(t[0] - half, t[0] - half + att.shape[1] * step_seconds, att.shape[0] + 0.5, 0.5))
            ax.set_xlim(0, end)
            ax.set_yticks(range(1, att.shape[0] + 1))
            ax.set_ylabel("skim step", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.set_title("attention weights of each skimming step over the steps"
                         + (" (s^I w^I + s^A w^A)" if len(mod) else ""), fontsize=8, loc="left", **plain)
            ax.set_gid(f"attention:{name}")
            bars = fig.add_subplot(grid[r, 1])
            if len(mod):
                k = np.arange(1, len(mod) + 1)
                bars.barh(k, mod[:, 0], color="C0", label="s^I (image)")
                bars.barh(k, mod[:, 1], left=mod[:, 0], color="C4", label="s^A (audio)")
                bars.set_ylim(len(mod) + 0.5, 0.5)
                bars.set_xlim(0, 1)
                bars.set_yticks([])
                bars.tick_params(labelsize=6)
                bars.set_title("modality s^I | s^A", fontsize=7, **plain)
                bars.legend(fontsize=5, loc="lower right", frameon=False)
                bars.set_gid(f"modality:{name}")
            else:
                bars.axis("off")
            r += 1
        # the contact sheet
        if frames:
            patches = sel.details.get("patches")
            cells = grid[r, :].subgridspec(max(1, math.ceil(len(shown_steps) / TILE_COLUMNS)), TILE_COLUMNS,
                                           wspace=0.08, hspace=0.5)
            for i, s in enumerate(shown_steps):
                tile = fig.add_subplot(cells[i // TILE_COLUMNS, i % TILE_COLUMNS])
                tile.imshow(frames[s])
                box = patch_boxes(patches, frames[s].shape[1], frames[s].shape[0]).get(s) if patches else None
                if box is not None:                          # imshow centres pixel i on i: its edges are at i +- 0.5
                    x0, y0, x1, y1 = box
                    tile.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.5,
                                             edgecolor=PATCH_COLOUR, gid=f"patch:{s}:{name}"))
                tile.set_xticks([])
                tile.set_yticks([])
                tile.set_title(f"#{i + 1} {t[s]:.1f} s\n{places[s]}", fontsize=7,
                               color="C2" if places[s] == "in action" else "k")
                tile.set_gid("tile")
        else:
            note = fig.add_subplot(grid[r, :])
            note.axis("off")
            note.text(0, 0.5, source, fontsize=8, color="C3", va="center", gid="frames-note", **plain)
        r += 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    segments = [(p.get_gid().split(":", 1)[1], *_span(p)) for a in fig.axes[:1] for p in a.patches
                if (p.get_gid() or "").startswith("segment:")]
    tiles = [a for a in fig.axes if a.get_gid() == "tile"]
    drawn = {"attention": {}, "modality": {}, "saliency": {}, "patches": {}}
    for a in tiles:
        for p in a.patches:
            kind, _, rest = (p.get_gid() or "").partition(":")
            if kind == "patch":
                step, _, name = rest.partition(":")
                drawn["patches"].setdefault(name, []).append(
                    (int(step), (p.get_x() + 0.5, p.get_y() + 0.5, p.get_x() + 0.5 + p.get_width(),
                                 p.get_y() + 0.5 + p.get_height())))
    for a in fig.axes:
        kind, _, name = (a.get_gid() or "").partition(":")
        if kind == "attention":
            drawn["attention"][name] = tuple(a.images[0].get_array().shape)
        elif kind == "modality":
            drawn["modality"][name] = len(a.patches) // 2
        elif kind == "choice":
            curves = [line.get_gid().split(":", 1)[1] for line in a.lines if (line.get_gid() or "").startswith("saliency:")]
            if curves:
                drawn["saliency"][name] = curves
    fig.savefig(path)
    plt.close(fig)
    h, w = imread(path).shape[:2]
    return Shown(path, video.video_id, (w, h), rows, len(tiles), [a.get_title() for a in tiles],
                 [np.asarray(a.images[0].get_array()) for a in tiles], segments, source, drawn["attention"],
                 drawn["modality"], drawn["saliency"], notes, drawn["patches"])


def _has_attention(sel: Selection) -> bool:
    return len(sel.details.get("attention", ())) > 0


def _span(patch) -> tuple[float, float]:
    if hasattr(patch, "get_width"):           # axvspan draws a Rectangle (matplotlib >= 3.9), earlier a Polygon
        xs = [patch.get_x(), patch.get_x() + patch.get_width()]
    else:
        xs = np.asarray(patch.get_xy())[:, 0]
    return float(np.min(xs)), float(np.max(xs))


def show_video(store: FeatureStore, runs: Path, video_id: str, out: Path | None = None,
               methods: tuple[str, ...] = SHOW_METHODS, subsample: int = 5, steps: int = BUDGET,
               say: Callable[[str], None] = log.info) -> Shown:
    """``fs show VIDEO_ID``: run the methods on one stored video and draw its figure (default
    ``<runs>/show/VIDEO_ID.png``). Rows are ranked by ``<runs>/bench/bench.csv`` when a bench has run."""
    if not store.has_video(video_id):
        raise StoreError(f"video {video_id!r} is not a complete video of store {store.path}")
    ctx = BenchContext(store, runs, subsample, steps, say)
    bench_csv = runs / "bench" / "bench.csv"
    table = pd.read_csv(bench_csv) if bench_csv.is_file() else None
    selectors = show_selectors(ctx, tuple(methods), table)
    if not selectors:
        raise StoreError("no method could be shown (see the lines above)")
    video = store.read_video(video_id, bench_arrays(ctx, tuple(methods)))
    return render_video(store, video, [(s.name, s.select(video)) for s in selectors],
                        Path(out) if out else runs / "show" / f"{video_id}.png")

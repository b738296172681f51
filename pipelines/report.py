"""``report.html`` beside ``bench.csv``: the table, the trade-off plot, the sweep and the gallery in one
self-contained page (images embedded as data URIs, so it opens from disk anywhere), with the store's provenance at
the top; and the gallery's choice of videos."""
from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from featurestore import __version__

GALLERY_BUCKETS = ("most confident, right", "most confident, wrong", "least confident, right",
                   "least confident, wrong")


@dataclass
class GalleryItem:
    """One gallery figure: the video, why it was chosen, the figure."""

    video_id: str
    bucket: str
    confidence: float
    figure: Path


def gallery_videos(scores: np.ndarray, labels: np.ndarray, k: int) -> list[tuple[int, str]]:
    """``k`` test videos (index, bucket) for the gallery, taken in turn from the buckets of
    :data:`GALLERY_BUCKETS`: the most and the least confident among the right and among the wrong predictions
    (confidence = the top class probability). Fewer when the split has fewer videos."""
    confidence = scores.max(1)
    right = scores.argmax(1) == labels
    order = np.argsort(-confidence, kind="stable")
    queues = {"most confident, right": [i for i in order if right[i]],
              "most confident, wrong": [i for i in order if not right[i]],
              "least confident, right": [i for i in order[::-1] if right[i]],
              "least confident, wrong": [i for i in order[::-1] if not right[i]]}
    picked: list[tuple[int, str]] = []
    taken: set[int] = set()
    while len(picked) < min(k, len(labels)):
        before = len(picked)
        for bucket in GALLERY_BUCKETS:
            queue = queues[bucket]
            while queue and queue[0] in taken:
                queue.pop(0)
            if queue and len(picked) < k:
                i = int(queue.pop(0))
                picked.append((i, bucket))
                taken.add(i)
        if len(picked) == before:
            break
    return picked


ENERGY_MARK = " \u2264 energy"
"""Trails a learned (or plug-in) selector's row whose top-1 does not beat the best energy control's (see
:func:`below_energy`)."""


def below_energy(table: pd.DataFrame) -> np.ndarray:
    """Which rows are learned or plug-in selectors whose top-1 does not exceed the best energy control's (all False
    when the table has no control row, or no ``role`` column)."""
    if "role" not in table or not (table["role"] == "control").any():
        return np.zeros(len(table), bool)
    best = table.loc[table["role"] == "control", "top1"].max()
    return (table["role"].isin(("learned", "plugin")) & (table["top1"] <= best)).to_numpy()


def data_uri(path: Path) -> str:
    """A PNG embedded in the page."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _pct(v: float) -> str:
    return "–" if v != v else f"{100 * v:.1f}"


def table_html(table: pd.DataFrame) -> str:
    """The bench table, one row per method (``id="bench"``)."""
    cols = [("method", "method"), ("top1", "top-1 %"), ("interval", "95 % interval"), ("train_top1", "train top-1 %"),
            ("mAP", "mAP %"), ("segment_hit", "segment hit %"), ("gflops_per_video", "GFLOPs / video"),
            ("seconds_per_video", "s / video"), ("steps_per_video", "steps / video")]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in cols)
    body = []
    below = below_energy(table)
    for i, r in enumerate(table.to_dict("records")):
        cells = {"method": html.escape(r["method"]) + (' <span class="flag">one class</span>' if r.get("one_class")
                                                        else "")
                 + (f' <span class="flag">{html.escape(ENERGY_MARK.strip())}</span>' if below[i] else ""),
                 "top1": _pct(r["top1"]), "train_top1": _pct(r.get("train_top1", float("nan"))),
                 "interval": "–" if r.get("top1_lo", float("nan")) != r.get("top1_lo", float("nan"))
                 else f"{100 * r['top1_lo']:.0f}–{100 * r['top1_hi']:.0f}",
                 "mAP": _pct(r["mAP"]), "segment_hit": _pct(r.get("segment_hit", float("nan"))),
                 "gflops_per_video": f"{r['gflops_per_video']:.1f}",
                 "seconds_per_video": f"{r['seconds_per_video']:.4f}", "steps_per_video": f"{r['steps_per_video']:.1f}"}
        body.append("<tr>" + "".join(f"<td>{cells[c]}</td>" for c, _ in cols) + "</tr>")
    return f'<table id="bench"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def provenance_html(store_attrs: dict, info: dict) -> str:
    """The store's facts a reader needs to trust the numbers: dataset, sizes, versions, weights and their hashes."""
    models = store_attrs.get("provenance", {}).get("models", {})
    rows = [("dataset", store_attrs.get("dataset")), ("store", info.get("path")),
            ("videos", f"{info.get('videos')} ({', '.join(f'{k}: {v}' for k, v in info.get('per_split', {}).items())})"),
            ("classes", len(store_attrs.get("classes", []))), ("descriptors", ", ".join(store_attrs.get("descriptors",
                                                                                                          []))),
            ("kept inputs", ", ".join(store_attrs.get("inputs", [])) or "none"),
            ("schema / fs version", f"{store_attrs.get('schema_version')} / {store_attrs.get('fs_version')} "
                                    f"(report by fs {__version__})")]
    for name, rec in models.items():
        rec = dict(rec)
        rows.append((f"{name} weights", f"{rec.pop('source', '?')} (sha256 {str(rec.pop('sha256', '?'))[:16]}…)"))
        if rec:
            rows.append((f"{name} details", json.dumps(rec, sort_keys=True, default=str)))
    for key, value in store_attrs.get("provenance", {}).items():
        if key != "models":
            rows.append((key, json.dumps(value, sort_keys=True, default=str)))
    return ('<table id="provenance">' + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                                                for k, v in rows) + "</table>")


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1500px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 7px}
#bench td:not(:first-child){text-align:right}#provenance th{text-align:left;background:#f4f4f4}
img{max-width:100%;border:1px solid #ddd}.flag{color:#b00;font-size:11px}figure{margin:16px 0}
figcaption{font-size:13px;color:#444}.notes{color:#b00}"""


def write_report(path: Path, table: pd.DataFrame, store_attrs: dict, info: dict, notes: list[str],
                 figures: dict[str, Path], sweep: pd.DataFrame | None = None,
                 gallery: list[GalleryItem] = (), gallery_method: str = "") -> Path:
    """Write the self-contained bench page to ``path``; ``figures`` maps a caption to a PNG (trade-off, sweep)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>fs bench: {html.escape(str(store_attrs.get('dataset')))}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>fs bench — {html.escape(str(store_attrs.get('dataset')))}</h1>",
             f"<p>written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; test split {table.attrs.get('n_test', '?')} "
             f"videos</p>", "<h2>Store provenance</h2>", provenance_html(store_attrs, info),
             "<h2>Methods</h2>", table_html(table),
             "<p>top-1, mAP and segment hit (share of chosen steps inside an action segment) in %; the interval is a "
             "95 % bootstrap over test videos; GFLOPs = 2 × multiply-adds, counted with FlopCounterMode.</p>"]
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for caption, png in figures.items():
        parts.append(f'<figure><img src="{data_uri(png)}" alt="{html.escape(caption)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if sweep is not None and len(sweep):
        shown = sweep.assign(top1=sweep["top1"].map(_pct), mAP=sweep["mAP"].map(_pct),
                             gflops_per_video=sweep["gflops_per_video"].map(lambda v: f"{v:.1f}"))
        parts.append("<h2>Sweep: subsampling factor × early-stop step</h2>" +
                     shown.to_html(index=False, table_id="sweep", columns=["subsample", "steps", "top1", "mAP",
                                                                           "gflops_per_video"]))
    if gallery:
        parts.append(f"<h2>Gallery</h2><p>{len(gallery)} test videos, chosen by {html.escape(gallery_method)}'s "
                     f"confidence: the most and the least confident, right and wrong.</p>")
        for item in gallery:
            parts.append(f'<figure class="gallery"><img src="{data_uri(item.figure)}" alt="{html.escape(item.video_id)}">'
                         f"<figcaption>{html.escape(item.video_id)}: {html.escape(item.bucket)} "
                         f"({item.confidence:.2f})</figcaption></figure>")
    parts.append("</body></html>")
    path = Path(path)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path

"""``fs show``, the bench gallery and report.html, on generated synthetic videos (with and without kept inputs), the
real videos of ../shared/data/real, and a video whose file moved after extraction."""
from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import main
from featurestore.cluster import close_client, make_client
from featurestore.config import ExtractConfig
from featurestore.decode import frames_at
from featurestore.extract import run_extraction
from featurestore.store import FeatureStore
from manifests.schema import parse_distractors, parse_segments, read_manifest
from manifests.synth import generate_synthetic
from pipelines.bench import run_bench
from pipelines.report import gallery_videos
from pipelines.show import MAX_TILES, TILE_COLUMNS, render_video, show_video
from pipelines.train_avgn import train_avgn
from pipelines.train_head import train_head
from pipelines.train_sampler import train_sampler
from pipelines.train_skim import train_skim

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
CONFIG = dict(descriptors=("image", "audio", "fused"), student_weights="random", batch_size=8)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header, read without matplotlib."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def extract(df: pd.DataFrame, path: Path, client, classes: list[str], keep_inputs: bool) -> FeatureStore:
    store = FeatureStore(path, mode="a")
    summary = run_extraction(df, store, ExtractConfig(keep_inputs=keep_inputs, **CONFIG), client, "synthetic",
                             classes, progress=False)
    assert summary.failed == 0
    return FeatureStore(path)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Four synthetic videos (actions and distractors annotated), extracted twice: with kept frames and without; a
    head, a skimmer, an audio and a visual sampler and AVGN trained briefly on the first store (both stores hold the
    same features)."""
    root = tmp_path_factory.mktemp("show")
    manifest = generate_synthetic(root / "data", n_videos=4, n_classes=2, seconds=(12, 13), seed=3, test_fraction=0.5,
                                  jobs=2)
    df = read_manifest(manifest)
    classes = sorted(df["label"].unique())
    client = make_client(workers=1, processes=False)
    try:
        kept = extract(df, root / "inputs.zarr", client, classes, True)
        plain = extract(df, root / "plain.zarr", client, classes, False)
    finally:
        close_client(client)
    runs = root / "runs"
    train_head(kept, runs, epochs=2, device="cpu", sized=False)
    train_skim(kept, runs, epochs=2, device="cpu", sized=False)
    for modality, loss in (("audio", "sal-rank"), ("visual", "ac")):
        train_sampler(kept, runs, modality, loss, epochs=2, device="cpu", sized=False, say=lambda m: None)
    train_avgn(kept, runs, epochs=2, device="cpu", sized=False)
    return SimpleNamespace(root=root, df=df.set_index("video_id"), kept=kept, plain=plain, runs=runs)


def expected_place(t: float, row) -> str:
    """Where a step at ``t`` lies, from the manifest row alone."""
    if any(s <= t < e for s, e in parse_segments(row["segments"])):
        return "in action"
    if any(s <= t < e for _, _, s, e in parse_distractors(row["distractors"])):
        return "in a distractor"
    return "not in action"


def check_figure(shown, kept: FeatureStore, row, frames: str) -> None:
    """Size, one captioned tile per chosen step (at most MAX_TILES a method) showing the frame extraction kept
    there, the manifest's segments on the timeline."""
    width, height = png_size(shown.path)
    assert shown.size == (width, height) and width == 1500 and height > 500
    assert shown.frames == frames
    v = kept.read_video(shown.video_id, ["t", "frames"])
    t, kept_frames = v.arrays["t"], v.arrays["frames"]
    chosen = [s for m in shown.methods for s in m.steps[:MAX_TILES]]
    assert shown.tiles == len(chosen) > 0
    for s, caption, image in zip(chosen, shown.captions, shown.tile_images):
        assert caption.split("\n")[0].endswith(f"{t[s]:.1f} s")
        assert caption.split("\n")[1] == expected_place(float(t[s]), row)
        assert np.array_equal(image, kept_frames[s])
    drawn = sorted(shown.segments)
    want = sorted([("action", s, e) for s, e in parse_segments(row["segments"])] +
                  [("distractor", s, e) for _, _, s, e in parse_distractors(row["distractors"])])
    assert len(drawn) == len(want) and any(k == "distractor" for k, *_ in want)
    for (k1, s1, e1), (k2, s2, e2) in zip(drawn, want):
        assert k1 == k2 and s1 == pytest.approx(s2) and e1 == pytest.approx(e2)


def test_figure_from_kept_frames_draws_a_captioned_tile_per_chosen_step_and_the_manifest_segments(synth, tmp_path):
    vid = synth.kept.video_ids("test")[0]
    n = synth.kept.video_attrs(vid)["n_steps"]
    shown = show_video(synth.kept, synth.runs, vid, tmp_path / "f.png", say=lambda m: None,
                       methods=("UNIFORM", "SAMPLERS", "AVGN", "DENSE", "SKIM"))
    check_figure(shown, synth.kept, synth.df.loc[vid], "store")
    uniform, sampler, avgn, dense, skim = shown.methods
    assert uniform.name == "UNIFORM" and uniform.true == synth.df.loc[vid, "label"]
    assert len(set(uniform.steps)) == len(uniform.steps) == min(10, n)
    assert sampler.name == "SCS AV-union-list (K'=8) -> student" and avgn.name == "AVGN (k=10, T_G=all)"
    assert dense.steps == list(range(n)) and n > TILE_COLUMNS
    assert skim.name == "IMGAUD-SKIM (s=5, T=10)" and len(skim.steps) == 9
    # the skimmer's nine attention rows over the N steps with their s^I / s^A; the rankers' saliency curves
    assert shown.attention == {skim.name: (9, n)} and shown.modality == {skim.name: 9}
    assert shown.saliency == {sampler.name: ["visual", "audio"], avgn.name: ["AV-TeST"]}


def test_figure_without_kept_inputs_reads_the_frames_at_the_chosen_steps_from_the_video(synth, tmp_path):
    vid = synth.plain.video_ids("test")[0]
    shown = show_video(synth.plain, synth.runs, vid, tmp_path / "f.png", methods=("UNIFORM", "SKIM"),
                       say=lambda m: None)
    check_figure(shown, synth.kept, synth.df.loc[vid], "video")


def test_frames_read_by_seeking_equal_the_frames_extraction_kept(synth):
    vid = synth.kept.video_ids("train")[0]
    v = synth.kept.read_video(vid, ["t", "frames"])
    got = frames_at(v.attrs["path"], [float(t) for t in v.arrays["t"]])
    assert np.array_equal(got, v.arrays["frames"])


def test_a_moved_video_shows_its_timeline_without_frames_and_says_why(synth, tmp_path):
    vid = synth.plain.video_ids("test")[-1]
    path = Path(synth.plain.video_attrs(vid)["path"])
    moved = path.with_suffix(".moved")
    path.rename(moved)
    try:
        res = CliRunner().invoke(main, ["show", vid, "--store", str(synth.plain.path), "--runs", str(synth.runs),
                                        "--methods", "uniform,skim", "--out", str(tmp_path / "m.png")])
    finally:
        moved.rename(path)
    assert res.exit_code == 0, res.output
    assert "frames not shown" in res.output and str(path) in res.output and "no frames" in res.output
    assert png_size(tmp_path / "m.png")[0] == 1500


def test_show_cli_names_each_method_its_prediction_and_skips_untrained_ones(synth, tmp_path):
    vid = synth.kept.video_ids("test")[0]
    res = CliRunner().invoke(main, ["show", vid, "--store", str(synth.kept.path), "--runs", str(synth.runs),
                                    "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert "skipping avgn-no-audio" in res.output            # the AVGN ablations are not trained here
    lines = [line for line in res.output.splitlines() if "predicted" in line]
    assert [line.split()[0] for line in lines] == ["UNIFORM", "AV-ENERGY", "SCS", "AVGN", "IMGAUD-SKIM"]
    assert f"true {synth.df.loc[vid, 'label']}" in lines[0] and (tmp_path / "c.png").is_file()
    bad = CliRunner().invoke(main, ["show", "nope", "--store", str(synth.kept.path), "--runs", str(synth.runs)])
    assert bad.exit_code != 0 and "not a complete video" in bad.output
    empty = tmp_path / "no-runs"
    res = CliRunner().invoke(main, ["show", vid, "--store", str(synth.kept.path), "--runs", str(empty),
                                    "--methods", "skim,avgn", "--out", str(tmp_path / "e.png")])
    assert res.exit_code != 0 and "fs train-skim" in res.output and "no method could be shown" in res.output


def test_gallery_takes_the_most_and_least_confident_right_and_wrong_in_turn():
    scores = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55], [0.7, 0.3], [0.35, 0.65]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    # right: 0 (0.9), 1 (0.6), 3 (0.55), 5 (0.65); wrong: 2 (0.8), 4 (0.7)
    assert gallery_videos(scores, labels, 4) == [(0, "most confident, right"), (2, "most confident, wrong"),
                                                 (3, "least confident, right"), (4, "least confident, wrong")]
    assert [i for i, _ in gallery_videos(scores, labels, 6)] == [0, 2, 3, 4, 5, 1]
    assert len(gallery_videos(scores, labels, 20)) == 6
    assert [b for _, b in gallery_videos(scores[:1], labels[:1], 3)] == ["most confident, right"]


def _chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))


def test_an_exact_bench_row_name_is_shown_at_its_own_options_and_an_unknown_one_refused(synth, tmp_path):
    vid = synth.kept.video_ids("test")[0]
    n = synth.kept.video_attrs(vid)["n_steps"]
    shown = show_video(synth.kept, synth.runs, vid, tmp_path / "r.png", say=lambda m: None,
                       methods=("IMGAUD-SKIM (s=1, T=3)", "SCS audio SAL-RANK -> student"))
    assert [m.name for m in shown.methods] == ["IMGAUD-SKIM (s=1, T=3)", "SCS audio SAL-RANK -> student"]
    assert len(shown.methods[0].steps) == 2 and shown.attention == {"IMGAUD-SKIM (s=1, T=3)": (2, n)}
    with pytest.raises(ValueError, match="neither a bench method"):
        show_video(synth.kept, synth.runs, vid, tmp_path / "x.png", methods=("AVGN no audio tokens (k=4, T_G=2)",),
                   say=lambda m: None)


def test_bench_gallery_and_report_open_in_a_headless_browser(synth, tmp_path):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromedriver are missing: .ci/install installs them")
        pytest.skip("no chromium / chromedriver (apt-get install chromium chromium-driver)")
    out = tmp_path / "bench"
    (out / "gallery").mkdir(parents=True)
    (out / "gallery" / "stale.png").write_bytes(b"from an earlier run")
    table = run_bench(synth.kept, synth.runs, out, ("UNIFORM", "FRONT", "SKIM"), say=lambda m: None, gallery=2)
    assert len(table) == 3 and table.attrs["gallery"] == 2
    figures = sorted(p.name for p in (out / "gallery").glob("*.png"))
    assert len(figures) == 2
    assert all(f[:-4] in synth.kept.video_ids("test") for f in figures)
    report = (out / "report.html").read_text()
    assert "http://" not in report and "https://" not in report
    browser = _chromium()
    try:
        browser.get((out / "report.html").as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src.slice(0, 22)])")
        rows = browser.execute_script(
            "return Array.from(document.querySelectorAll('#bench tbody tr')).map(r => r.cells[0].innerText)")
        provenance = browser.execute_script("return document.querySelector('#provenance').innerText")
    finally:
        browser.quit()
    assert len(images) == 1 + 1 + 2                     # trade-off plot, sweep plot, two gallery figures
    assert all(done and width > 0 and src == "data:image/png;base64," for done, width, src in images)
    assert [r.split(" one class")[0].strip() for r in rows] == list(table["method"])
    sha = synth.kept.attrs["provenance"]["models"]["student"]["sha256"]
    assert sha[:16] in provenance and "synthetic" in provenance


@pytest.mark.skipif(not REAL.is_dir() and os.environ.get("CI") != "true", reason="../shared/data/real is absent")
def test_figure_for_the_real_videos_reads_the_kept_frames_from_the_files(tmp_path):
    assert REAL.is_dir(), "CI lays ../shared/data/real"
    df = pd.DataFrame([{"video_id": p.stem, "path": str(p), "label": f"r{i}", "split": "train", "segments": ""}
                       for i, p in enumerate(sorted(REAL.glob("*.mp4")))])
    client = make_client(workers=1, processes=False)
    try:
        kept = extract(df, tmp_path / "kept.zarr", client, sorted(df["label"]), True)
        store = extract(df, tmp_path / "real.zarr", client, sorted(df["label"]), False)
    finally:
        close_client(client)
    for vid in df["video_id"]:         # a 30 fps and a 28 fps file: seeking returns the frames extraction took
        v = kept.read_video(vid, ["t", "frames"])
        assert np.array_equal(frames_at(v.attrs["path"], [float(t) for t in v.arrays["t"]]), v.arrays["frames"])
    from models.baselines import HeadSelector, StepClassifier
    from featurestore.cost import unit_gflops

    head = HeadSelector("UNIFORM", StepClassifier(512, 2), unit_gflops(), rule="uniform")
    for vid in df["video_id"]:
        video = store.read_video(vid)
        shown = render_video(store, video, [("UNIFORM", head.select(video))], tmp_path / f"{vid}.png")
        assert shown.frames == "video" and shown.tiles == 10 and shown.segments == []
        assert all(c.endswith("not annotated") for c in shown.captions)
        frames = kept.read_video(vid, ["frames"]).arrays["frames"]
        assert all(np.array_equal(img, frames[s]) for img, s in zip(shown.tile_images, shown.methods[0].steps))
        assert png_size(shown.path)[0] == 1500


def test_confounders_are_spans_of_their_own_and_steps_inside_them_say_so():
    from pipelines.show import segment_spans, step_places
    from featurestore.store import VideoFeatures
    attrs = {"label": "c0", "segments": "0.0-1.0", "distractors": "audio:c1:1.0-2.0", "confounders": "av:2.0-3.0"}
    spans = segment_spans(attrs)
    assert [(k, s, e) for k, s, e, _ in spans] == [("action", 0, 1), ("distractor", 1, 2), ("confounder", 2, 3)]
    video = VideoFeatures("v", {**attrs, "n_steps": 4}, {"t": np.array([0.5, 1.5, 2.5, 3.5], np.float32)})
    assert step_places(video, spans) == ["in action", "in a distractor", "in a confounder", "not in action"]


def test_fs_show_help_names_the_rows_it_draws_by_default():
    from cli.main import SHOW_DEFAULT
    from pipelines.show import SHOW_METHODS
    assert SHOW_DEFAULT == ",".join(SHOW_METHODS)

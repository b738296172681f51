import subprocess
from dataclasses import replace

import numpy as np
import pytest

from featurestore.decode import DecodedVideo, ffmpeg_exe, probe
from manifests.schema import parse_segments, read_manifest
from manifests.synth import (AUDIO_RATE, FPS, class_signatures, generate_synthetic, iter_frames, plan_videos,
                             render_audio)


def test_plans_are_deterministic_in_the_seed():
    a, b, c = (plan_videos(12, 3, (20, 40), s, 0.25) for s in (7, 7, 8))
    assert a == b and a != c


def test_action_segments_are_sparse_and_distractors_are_drawn_from_every_class():
    own = 0
    for plan in plan_videos(40, 5, (30, 90), 1, 0.25):
        assert 2 <= len(plan.actions) <= 5 and 1 <= len(plan.distractors) <= 3
        segs = sorted(plan.actions + plan.distractors, key=lambda s: s.start)
        assert all(a.end <= b.start for a, b in zip(segs, segs[1:]))        # no overlap
        assert 0 <= segs[0].start and segs[-1].end <= plan.duration
        covered = sum(s.end - s.start for s in plan.actions)
        assert covered <= plan.duration / 3                                   # the class stays sparse
        for d in plan.distractors:
            assert 0 <= d.cls < 5 and d.visual != d.audio                    # picture without sound or vice versa
            own += d.cls == plan.label
        assert not plan.confounders
    # the video's own class too: a distractor must not tell which class a video is not (elimination)
    assert own > 0


def test_long_action_regime_follows_its_statistics():
    plans = plan_videos(60, 4, (30, 50), 3, 0.25, actions=(1, 2), action_seconds=(8, 14), action_share=0.6)
    lengths = []
    for plan in plans:
        assert 1 <= len(plan.actions) <= 2
        segs = sorted(plan.actions + plan.distractors, key=lambda s: s.start)
        assert all(a.end <= b.start for a, b in zip(segs, segs[1:]))
        assert sum(s.end - s.start for s in segs) <= 0.6 * plan.duration + 0.05   # rounding to 0.01 s per end
        lengths += [s.end - s.start for s in plan.actions]
    assert max(lengths) <= 14.01 and np.median(lengths) > 5                      # tens of seconds, not 1.5-3.5
    sparse = [s.end - s.start for p in plan_videos(60, 4, (30, 50), 3, 0.25) for s in p.actions]
    assert np.median(lengths) > 3 * np.median(sparse)
    with pytest.raises(ValueError, match="--action-share"):
        plan_videos(4, 2, (20, 30), 0, 0.2, action_share=1.5)
    with pytest.raises(ValueError, match="--actions"):
        plan_videos(4, 2, (20, 30), 0, 0.2, actions=(3, 1))


def test_split_is_stratified_with_test_videos_in_every_class():
    plans = plan_videos(20, 4, (12, 14), 0, 0.25)
    for c in range(4):
        splits = [p.split for p in plans if p.label == c]
        assert splits.count("test") == 1 and splits.count("train") == 4


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="--classes"):
        plan_videos(4, 1, (20, 30), 0, 0.2)
    with pytest.raises(ValueError, match="--seconds"):
        plan_videos(4, 2, (30, 20), 0, 0.2)


def test_class_shows_only_in_its_segments_in_picture_and_sound():
    sigs = class_signatures(3)
    plan = plan_videos(3, 3, (20, 20), 2, 0.0)[0]
    act = plan.actions[0]
    frames = list(iter_frames(plan, sigs))
    inside = frames[int((act.start + act.end) / 2 * 30)].astype(float)
    colour = np.asarray(sigs[plan.label].rgb) * 255
    near = lambda f: (np.abs(f - colour).sum(-1) < 60).mean()          # noqa: E731
    quiet = [f for i, f in enumerate(frames) if not any(s.start - 0.2 <= i / 30 < s.end + 0.2 for s in
                                                            plan.actions + plan.distractors)]
    assert near(inside) > 0.02 and max(near(f.astype(float)) for f in quiet[::15]) < 0.005
    audio = render_audio(plan, sigs)[:, 0]
    tone = sigs[plan.label].tone_hz

    def tone_energy(t0: float) -> float:
        x = audio[int(t0 * AUDIO_RATE): int(t0 * AUDIO_RATE) + AUDIO_RATE // 2]
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        f = np.fft.rfftfreq(len(x), 1 / AUDIO_RATE)
        return spec[np.abs(f - tone) < 15].max() / spec.mean()
    gap_t = [i / 30 for i in range(len(frames)) if not any(s.start - 0.6 <= i / 30 < s.end + 0.1 for s in
                                                             plan.actions + plan.distractors)][0]
    assert tone_energy(act.start) > 3 * tone_energy(gap_t)


def test_generated_dataset_is_h264_aac_with_a_valid_manifest_whatever_the_jobs(tmp_path):
    csv = generate_synthetic(tmp_path / "syn", n_videos=3, n_classes=2, seconds=(12, 12.5), seed=5,
                             test_fraction=0.4)
    df = read_manifest(csv)
    assert len(df) == 3 and set(df["split"]) == {"train", "test"}
    assert all(parse_segments(s) for s in df["segments"])
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", df["path"][0]], capture_output=True, text=True).stderr
    assert "Video: h264" in out and "Audio: aac" in out
    assert probe(df["path"][0]).has_audio
    with DecodedVideo(df["path"][0], with_audio=True) as dec:
        n = sum(len(c) for c in dec.frames())
    assert abs(n - float(df["duration"][0]) * 30) <= 2
    again = generate_synthetic(tmp_path / "syn2", n_videos=3, n_classes=2, seconds=(12, 12.5), seed=5,
                               test_fraction=0.4, jobs=2)              # encoded in parallel: the same bytes
    assert again.read_text() == csv.read_text()
    for rel in df["path"]:
        name = rel.split("/")[-1]
        assert (tmp_path / "syn2" / "videos" / name).read_bytes() == (tmp_path / "syn" / "videos" / name).read_bytes()


def test_confounders_are_class_neutral_and_as_loud_and_moving_as_actions():
    sigs = class_signatures(3)
    plans = plan_videos(30, 3, (30, 40), 9, 0.0, actions=(1, 2), action_seconds=(4, 6), action_share=0.7,
                        confounders=(1, 3))
    assert all(1 <= len(p.confounders) <= 3 for p in plans)
    kinds = {c.kind for p in plans for c in p.confounders}
    assert kinds == {"audio", "visual", "av"} and all(c.cls == -1 for p in plans for c in p.confounders)
    for p in plans:
        segs = sorted(p.actions + p.distractors + p.confounders, key=lambda s: s.start)
        assert all(a.end <= b.start for a, b in zip(segs, segs[1:]))
    # without confounders the plans are what they were: the confounder draws come after the rest
    plain = plan_videos(30, 3, (30, 40), 9, 0.0, actions=(1, 2), action_seconds=(4, 6), action_share=0.7)
    assert [p.label for p in plain] == [p.label for p in plans] and not any(p.confounders for p in plain)

    plan = next(p for p in plans if any(c.kind == "av" for c in p.confounders))
    con = next(c for c in plan.confounders if c.kind == "av")
    act = plan.actions[0]
    audio = render_audio(plan, sigs)[:, 0].astype(float)
    bare = render_audio(replace(plan, actions=[], distractors=[], confounders=[]), sigs)[:, 0].astype(float)

    def added_rms(seg) -> float:          # the segment's own sound: the mix minus the background alone
        a, b = int(seg.start * AUDIO_RATE), int(seg.end * AUDIO_RATE)
        return float(np.sqrt(np.mean((audio[a:b] - bare[a:b]) ** 2)))
    assert added_rms(con) == pytest.approx(added_rms(act), rel=0.1)
    actions, confounders = [], []
    for plan in [p for p in plans if any(c.visual for c in p.confounders)][:6]:
        frames = np.stack(list(iter_frames(plan, sigs))).astype(np.float32)
        diff = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
        segs = plan.actions + plan.distractors + plan.confounders
        quiet = [i for i in range(len(diff)) if not any(s.start - 0.1 <= i / FPS < s.end + 0.1 for s in segs)]
        background = diff[quiet].mean()              # the per-frame noise of the background texture

        def motion(seg) -> float:
            return float(diff[int(seg.start * FPS) + 1: int(seg.end * FPS) - 1].mean() - background)
        actions += [motion(a) for a in plan.actions]
        confounders += [motion(c) for c in plan.confounders if c.visual]
    assert min(confounders) > 0.1 and 0.4 < np.mean(confounders) / np.mean(actions) < 2.5


def test_manifest_confounders_are_parsed_and_bad_ones_refused():
    from manifests.schema import parse_confounders
    assert parse_confounders("audio:1.5-3;av:9-11.25") == [("audio", 1.5, 3.0), ("av", 9.0, 11.25)]
    assert parse_confounders("") == []
    for bad in ("loud:1-2", "audio:", "av:3-1"):
        with pytest.raises(ValueError):
            parse_confounders(bad)


def test_confounder_kinds_choose_what_is_drawn_and_unknown_kinds_are_refused():
    plans = plan_videos(20, 3, (16, 24), 4, 0.0, actions=(1, 2), action_seconds=(6, 14), action_share=0.7,
                        confounders=(2, 3), confounder_kinds=("av",))
    assert {c.kind for p in plans for c in p.confounders} == {"av"}
    with pytest.raises(ValueError, match="--confounder-kinds"):
        plan_videos(4, 2, (20, 30), 0, 0.2, confounders=(1, 1), confounder_kinds=("loud",))

"""Plug-in methods: ``fs bench --methods`` and ``fs show --methods`` run builders that live outside fs, named as
``pkg.module:attr`` or registered by an installed package under the ``fs.methods`` entry-point group; every way a
plug-in can be wrong is said."""
from __future__ import annotations

import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cli.main import main
from examples.custom_selector import AudioNormSelector
from models.selection import UnitCosts, VideoBlock, select_block
from pipelines.methods import (ENTRY_POINT_GROUP, METHODS, BenchContext, MethodError, build_rows, installed_methods,
                               parse_methods, resolve_method, role)
from tests.test_bench import fabricate_store

EXAMPLE = "examples.custom_selector:build"
COSTS = UnitCosts(image=0.5, audio=0.25, fusion=0.125, clip=80.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return fabricate_store(tmp_path_factory.mktemp("plug") / "s.zarr", n_videos=12, seed=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One runs folder for the module: the per-step head is trained once, on first use."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Write modules into a folder on sys.path: ``plugins(name=source, ...)``."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(**modules: str) -> None:
        for name, source in modules.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return write


class Fixed:
    """A selector answering every video with its first step and a uniform distribution over three classes."""

    def __init__(self, name: str):
        self.name = name

    def select(self, video):
        from models.selection import Selection
        return Selection(np.array([0]), np.full(3, 1 / 3), 0.0)


# --- the example selector ------------------------------------------------------------------------------------------

def hand_made_video() -> SimpleNamespace:
    """Six steps whose audio descriptors have the norms 1, 5, 3, 5, 0, 2 (steps 1 and 3 tie)."""
    rng = np.random.default_rng(0)
    direction = rng.normal(size=256)
    direction /= np.linalg.norm(direction)
    audio = np.stack([s * direction for s in (1.0, 5.0, 3.0, 5.0, 0.0, 2.0)]).astype(np.float16)
    fused = rng.normal(size=(6, 512)).astype(np.float16)
    return SimpleNamespace(video_id="hand", arrays={"audio": audio, "fused": fused, "t": np.arange(6.0)},
                           attrs={"label": "a"})


def test_example_picks_the_loudest_audio_descriptors_and_counts_what_it_computes():
    torch.manual_seed(0)
    head = torch.nn.Linear(512, 3).eval()
    video = hand_made_video()
    sel = AudioNormSelector("AUDIO-NORM", head, COSTS, k=3).select(video)
    assert sel.steps.tolist() == [1, 3, 2]          # by norm, the tie to the earlier step
    # every step's audio descriptor, then image + Psi of the 3 chosen, then the head: 2 x 3 rows x 512 x 3 FLOPs
    assert sel.gflops == pytest.approx(6 * 0.25 + 3 * (0.5 + 0.125) + 2 * 3 * 512 * 3 / 1e9)
    with torch.no_grad():
        z = torch.from_numpy(video.arrays["fused"][[1, 3, 2]].astype(np.float32))
        expected = torch.softmax(head(z), 1).mean(0).numpy()
    np.testing.assert_allclose(sel.scores, expected, rtol=1e-6)
    # the bench's blocks fall back to select, video by video
    block = select_block(AudioNormSelector("AUDIO-NORM", head, COSTS, k=3), VideoBlock.of([video, video]))
    assert block.steps.tolist() == [[1, 3, 2], [1, 3, 2]]


def test_bench_runs_the_example_beside_uniform(store, runs):
    res = CliRunner().invoke(main, ["bench", "--store", str(store.path), "--runs", str(runs), "--no-sweep",
                                    "--methods", f"{EXAMPLE},uniform"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(runs / "bench" / "bench.csv")
    assert table["method"].tolist() == ["UNIFORM", "AUDIO-NORM"]       # the plug-in after the built-in rows
    assert table["role"].tolist() == ["baseline", "plugin"]
    assert "AUDIO-NORM" in res.output
    # both choose 10 steps of every test video (12-39 steps) and run the same head on them; the plug-in also pays
    # the audio descriptor of the steps it did not choose: (mean steps - 10) x audio GFLOPs per video
    from featurestore.cost import unit_gflops
    n = np.mean([store.read_video(v, ["t"]).attrs["n_steps"] for v in store.video_ids()
                 if store.read_video(v, ["t"]).attrs["split"] == "test"])
    by = table.set_index("method")
    assert by.loc["AUDIO-NORM", "steps_per_video"] == by.loc["UNIFORM", "steps_per_video"] == 10
    assert by.loc["AUDIO-NORM", "gflops_per_video"] - by.loc["UNIFORM", "gflops_per_video"] == \
        pytest.approx((n - 10) * unit_gflops().audio, rel=1e-6)


def test_show_takes_a_plugin_spec(store, runs, tmp_path):
    video_id = store.video_ids()[0]
    res = CliRunner().invoke(main, ["show", video_id, "--store", str(store.path), "--runs", str(runs), "--methods",
                                    f"UNIFORM,{EXAMPLE}", "--out", str(tmp_path / "f.png")])
    assert res.exit_code == 0, res.output
    video = store.read_video(video_id, ["audio"])
    norms = np.linalg.norm(video.arrays["audio"].astype(np.float32), axis=1)
    expected = np.argsort(-norms, kind="stable")[:10].tolist()
    line = next(line for line in res.output.splitlines() if line.strip().startswith("AUDIO-NORM"))
    assert line.endswith(f"steps {expected}")
    assert (tmp_path / "f.png").stat().st_size > 0


def test_a_module_in_the_working_folder_is_found_though_the_fs_script_leaves_it_off_sys_path(tmp_path, monkeypatch):
    (tmp_path / "cwd_plugin.py").write_text("from tests.test_plugins import Fixed\ndef build(ctx):\n"
                                            "    return [Fixed('CWD')]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])   # as the fs script runs
    assert [r.name for r in resolve_method("cwd_plugin:build")(None)] == ["CWD"]
    assert sys.path[-1] == str(tmp_path)          # after the installed packages: it shadows none of them


# --- entry points of installed packages -------------------------------------------------------------------------------

def install_fake_distribution(root, entry: str = "myplug_methods:build") -> None:
    """A package ``myplug`` 0.1 as pip installs it: its dist-info (METADATA, entry_points.txt registering the method
    ``my-first-step`` under fs.methods) and its module, in ``root``."""
    info = root / "myplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nmy-first-step = {entry}\n")


def test_an_installed_entry_point_is_found_by_name(plugins, tmp_path):
    install_fake_distribution(tmp_path)
    plugins(myplug_methods="""
        from tests.test_plugins import Fixed

        def build(ctx):
            return [Fixed("FIRST-STEP")]
    """)
    assert installed_methods()["my-first-step"].value == "myplug_methods:build"
    assert parse_methods("my-first-step,uniform") == ("my-first-step", "UNIFORM")
    rows = resolve_method("my-first-step")(None)
    assert [r.name for r in rows] == ["FIRST-STEP"] and role("my-first-step") == "plugin"
    listed = CliRunner().invoke(main, ["bench", "--list-methods"])
    assert listed.exit_code == 0, listed.output
    assert "my-first-step" in listed.output and "myplug_methods:build" in listed.output and "[myplug]" in listed.output
    assert all(name in listed.output for name in METHODS)


def test_without_entry_points_the_list_says_how_to_register_one():
    res = CliRunner().invoke(main, ["bench", "--list-methods"])
    assert res.exit_code == 0 and "installed methods: none" in res.output and ENTRY_POINT_GROUP in res.output


def test_plugin_rows_follow_the_built_in_rows_in_the_order_given(plugins):
    plugins(two_plugins="""
        from tests.test_plugins import Fixed

        def first(ctx):
            return [Fixed("P1"), Fixed("P2")]

        def single(ctx):
            return Fixed("P3")          # one selector, not a list: taken as one row
    """)
    ctx = SimpleNamespace()
    rows = build_rows(ctx, ("two_plugins:single", "two_plugins:first"))
    assert [(m, s.name) for m, s in rows] == [("two_plugins:single", "P3"), ("two_plugins:first", "P1"),
                                             ("two_plugins:first", "P2")]


# --- every way a plug-in can be wrong ------------------------------------------------------------------------------

BAD = {
    "raises": "raise RuntimeError('no GPU here')\n",
    "needs_missing": "import fs_not_installed_pkg_xyz\n",
    "three": "build = 3\n",
    "klass": "from tests.test_plugins import Fixed as Sel\n",
    "instance": "from tests.test_plugins import Fixed\nsel = Fixed('X')\n",
    "returns_strings": "def build(ctx):\n    return ['UNIFORM']\n",
    "returns_none": "def build(ctx):\n    return None\n",
    "returns_nameless": "class S:\n    def select(self, video):\n        pass\n\ndef build(ctx):\n    return [S()]\n",
    "twice": "from tests.test_plugins import Fixed\ndef build(ctx):\n    return [Fixed('X'), Fixed('X')]\n",
}


@pytest.mark.parametrize("spec, said", [
    ("NOSUCH", "unknown method 'NOSUCH'; choose from RANDOM, UNIFORM"),
    ("fs_no_such_pkg.mod:build", "cannot import module 'fs_no_such_pkg.mod': ModuleNotFoundError"),
    ("needs_missing:build", "module 'needs_missing' was found, but a module it imports is missing"),
    ("raises:build", "importing module 'raises' failed in its own code: RuntimeError: no GPU here"),
    ("examples.custom_selector:nope", "examples.custom_selector has no attribute 'nope' (its callables: "),
    ("examples.custom_selector:AudioNormSelector.nope", "examples.custom_selector.AudioNormSelector has no attribute"),
    ("three:build", "method 'three:build' is not callable (it is int 3)"),
    ("klass:Sel", "is the Selector class Fixed, not a builder"),
    ("instance:sel", "is a Selector instance ('X'), not a builder"),
])
def test_a_method_that_does_not_resolve_says_why(plugins, spec, said):
    plugins(**BAD)
    with pytest.raises(MethodError) as e:
        resolve_method(spec)
    assert said in str(e.value)
    if "cannot import" in said:
        assert "sys.path" in str(e.value) and "PYTHONPATH" in str(e.value)


@pytest.mark.parametrize("spec, said", [
    ("returns_strings:build", "its builder returned a str, which is not a selector (no name or select"),
    ("returns_none:build", "its builder returned NoneType, not a list of selectors"),
    ("returns_nameless:build", "its builder returned a S, which is not a selector (no name:"),
    ("twice:build", "two rows are named 'X' (from twice:build)"),
])
def test_a_builder_that_returns_no_selectors_says_why(plugins, spec, said):
    plugins(**BAD)
    with pytest.raises(MethodError) as e:
        build_rows(SimpleNamespace(), (spec,))
    assert said in str(e.value)


def test_a_plugin_row_named_as_a_built_in_row_is_refused(plugins, store, runs):
    plugins(uniform_again="from tests.test_plugins import Fixed\ndef build(ctx):\n    return [Fixed('UNIFORM')]\n")
    with pytest.raises(MethodError, match="two rows are named 'UNIFORM' \\(from UNIFORM and uniform_again:build\\)"):
        build_rows(BenchContext(store, runs, say=lambda m: None), ("UNIFORM", "uniform_again:build"))


def test_an_entry_point_that_does_not_load_names_its_package(plugins, tmp_path):
    install_fake_distribution(tmp_path, entry="myplug_gone:build")
    with pytest.raises(MethodError, match=r"entry point 'myplug_gone:build' of group fs.methods \(package myplug\) "
                                          r"does not load: ModuleNotFoundError"):
        resolve_method("my-first-step")


def test_the_bench_refuses_a_bad_method_before_reading_the_store(tmp_path):
    res = CliRunner().invoke(main, ["bench", "--store", str(tmp_path / "none.zarr"), "--runs", str(tmp_path / "r"),
                                    "--methods", "UNIFORM,fs_no_such_pkg:build"])
    assert res.exit_code != 0 and "cannot import module 'fs_no_such_pkg'" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "r").exists()



def test_plugin_rows_are_marked_against_the_energy_controls():
    from pipelines.bench import bench_notes
    from pipelines.report import below_energy

    table = pd.DataFrame({"method": ["UNIFORM", "AV-ENERGY", "SKIM", "MINE", "MINE-2"],
                          "role": ["baseline", "control", "learned", "plugin", "plugin"],
                          "top1": [0.3, 0.5, 0.4, 0.5, 0.6], "top1_lo": 0.0, "top1_hi": 1.0, "train_top1": 0.9,
                          "one_class": False})
    assert below_energy(table).tolist() == [False, False, True, True, False]     # a tie does not beat the control
    assert any("2 learned or plug-in selector row(s)" in line for line in bench_notes(table, n_test=100))

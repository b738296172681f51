"""benchmarks/scale_store.py's generator on a few short videos: a store the trainers accept, as an extraction writes."""
from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from featurestore.store import FeatureStore, check_video

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "scale_store.py"


@pytest.fixture(scope="module")
def scale():
    """The script, imported by path as a module."""
    spec = importlib.util.spec_from_file_location("scale_store", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _dict_keys(node: ast.AST) -> set[str]:
    return {k.value for k in node.keys if isinstance(k, ast.Constant)}


def extraction_attr_keys() -> set[str]:
    """The attribute keys a real extraction writes, read from the code: the ``attrs = {...}`` of
    ``Extractor.extract`` and the ``attrs.update({...})`` of ``extract_video_task``."""
    keys: set[str] = set()
    for path in (REPO / "featurestore" / "extractor.py", REPO / "featurestore" / "extract.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                    and any(isinstance(t, ast.Name) and t.id == "attrs" for t in node.targets)):
                keys |= _dict_keys(node.value)
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "attrs"
                    and node.args and isinstance(node.args[0], ast.Dict)):
                keys |= _dict_keys(node.args[0])
    assert {"n_steps", "duration", "has_audio", "label", "split", "provenance"} <= keys   # the parse found them
    return keys


def test_generator_writes_the_store_an_extraction_writes(scale, tmp_path):
    spec = scale.GenSpec(str(tmp_path / "s.zarr"), videos=6, classes=2, seed=3, seconds=(12.0, 16.0))
    stats = scale.generate(spec, jobs=1, progress=False)
    assert (stats.planned, stats.written, stats.already) == (6, 6, 0)

    store = FeatureStore(spec.store)
    plans = {p.video_id: p for p in scale.plan(spec)}
    assert store.video_ids() == sorted(plans)
    names = scale.class_names(2)
    assert store.attrs["classes"] == names and store.attrs["descriptors"] == ["image", "audio", "fused"]
    splits = {v: p.split for v, p in plans.items()}
    assert sorted(splits.values()) == ["test"] * 2 + ["train"] * 4            # 25 % of 6, one test video per class
    assert {p.label for p in plans.values() if p.split == "test"} == {0, 1}   # stratified

    want_keys = extraction_attr_keys()
    for vid, p in plans.items():
        video = store.read_video(vid)
        n = video.n_steps
        assert n == -(-round(p.duration * 30) // 16) and video.attrs["split"] == p.split
        assert video.attrs["label"] == names[p.label]
        assert {k: (a.shape, a.dtype.str) for k, a in video.arrays.items()} == {
            "t": ((n,), "<f4"), "image": ((n, 256), "<f2"), "audio": ((n, 256), "<f2"), "fused": ((n, 512), "<f2")}
        assert not check_video(video, store.attrs)
        assert want_keys <= set(video.attrs)        # plus what the store adds itself (video_id, complete, ...)
        assert video.attrs["segments"] and video.attrs["provenance"] == store.attrs["provenance"]
    arrays, attrs = scale.video_arrays_attrs(plans[vid], spec, scale.class_directions(spec), _fusion(store),
                                             store.attrs["provenance"], names)
    assert set(attrs) == want_keys                  # exactly the attributes an extraction passes to write_video
    assert np.array_equal(arrays["fused"], store.read_video(vid)["fused"])    # deterministic in the seed

    again = scale.generate(spec, jobs=1, progress=False)      # resumes: nothing left to write
    assert (again.written, again.already) == (0, 6)


def _fusion(store: FeatureStore):
    from pipelines.data import student_fusion
    return student_fusion(store).eval()       # the recorded student rebuilds offline, hash-checked


def test_action_steps_carry_the_class_direction(scale, tmp_path):
    spec = scale.GenSpec(str(tmp_path / "s.zarr"), videos=4, classes=2, seed=1, seconds=(12.0, 14.0), signal=2.0)
    d_i, _ = scale.class_directions(spec)
    p = scale.plan(spec)[0]
    arrays, attrs = scale.video_arrays_attrs(p, spec, (d_i, d_i), _random_fusion(), {}, scale.class_names(2))
    act = scale.step_mask(arrays["t"], [(s.start, s.end) for s in p.actions])
    assert act.any() and not act.all()
    proj = arrays["image"].astype(np.float32) @ d_i[p.label] / np.linalg.norm(d_i[p.label])
    assert proj[act].mean() > proj[~act].mean() + 10


def _random_fusion():
    from models.imgaud import Fusion
    return Fusion().eval()

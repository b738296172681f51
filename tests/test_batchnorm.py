"""BatchNorm consistency (issue 17, value 6): on a store whose features sit around a common offset (N(20, 5^2), far
from BatchNorm's initial running statistics), every trainer's model classifies its own training split as well in
eval mode (the bench's) as in train mode (batch statistics), within 0.1."""
import copy

import numpy as np
import pytest
import torch

from featurestore.store import FeatureStore
from featurestore.weights import load_student
from models.avgn import sample_steps
from tests.test_bench import write_fabricated

CLASSES = ["a", "b", "c"]


def offset_store(path, n_videos=18, seed=0):
    """Every step carries its class (a prototype N(0, 2^2) per dimension) on top of N(20, 5^2) noise."""
    rng = np.random.default_rng(seed)
    student, rec = load_student("random", 0, 400)
    store = FeatureStore(path, mode="a")
    store.initialise("offset", CLASSES, ["image", "audio", "fused"], {"models": {"student": rec}})
    proto_i, proto_a = rng.normal(0, 2, (3, 256)), rng.normal(0, 2, (3, 256))
    for v in range(n_videos):
        label, n = v % 3, int(rng.integers(8, 17))
        z_i = rng.normal(20, 5, (n, 256)) + proto_i[label]
        z_a = rng.normal(20, 5, (n, 256)) + proto_a[label]
        write_fabricated(store, student, v, z_i, z_a, CLASSES[label], "test" if v % 6 == 0 else "train")
    return FeatureStore(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return offset_store(tmp_path_factory.mktemp("offset") / "s.zarr")


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    """The bench tests' store (the class at 2-4 sparse steps), its noise drawn from N(20, 5^2) instead of N(0, 1)."""
    from tests.test_bench import fabricate_store
    return fabricate_store(tmp_path_factory.mktemp("sparse") / "s.zarr", n_videos=24, loc=20, scale=5)


def training_split(store):
    """Padded (B, N, D) image, audio, fused, the (B, N) mask and (B,) labels of the training videos, read here."""
    videos = [store.read_video(v) for v in store.video_ids()]
    videos = [v for v in videos if v.attrs["split"] == "train"]
    n = max(v.n_steps for v in videos)
    out = {}
    for k, d in (("image", 256), ("audio", 256), ("fused", 512)):
        z = torch.zeros(len(videos), n, d)
        for b, v in enumerate(videos):
            z[b, : v.n_steps] = torch.from_numpy(v[k].astype(np.float32))
        out[k] = z
    mask = torch.zeros(len(videos), n, dtype=torch.bool)
    for b, v in enumerate(videos):
        mask[b, : v.n_steps] = True
    labels = torch.tensor([CLASSES.index(v.attrs["label"]) for v in videos])
    return out, mask, labels


def both_modes(model, predict):
    """Accuracy of ``predict(model)`` in train mode (on a copy: a train-mode pass moves the running statistics)
    and in eval mode."""
    with torch.no_grad():
        train = predict(copy.deepcopy(model).train())
        evals = predict(model.eval())
    return train, evals


def check(train_acc, eval_acc):
    assert train_acc >= 0.6, f"nothing learnt (train mode {train_acc:.2f}): the check would be vacuous"
    assert eval_acc >= train_acc - 0.1, f"eval mode {eval_acc:.2f} vs train mode {train_acc:.2f}"


@pytest.mark.parametrize("model", ["skim", "lstm"])
def test_skimmer_and_lstm_agree_in_eval_mode(sparse, tmp_path, model):
    from pipelines.train_skim import train_skim
    # a short schedule (9 steps): BatchNorm's running statistics have not caught up with the offset by its end
    net = train_skim(sparse, tmp_path, model=model, epochs=3, batch_size=6, milestones=(5,), lr=0.05,
                     sized=False).model
    z, mask, y = training_split(sparse)
    if model == "lstm":
        predict = lambda m: (m(z["fused"], mask).argmax(1) == y).float().mean().item()             # noqa: E731
    else:
        predict = lambda m: (m(z["image"], z["audio"], mask, 10).logits.argmax(1) == y).float().mean().item()  # noqa
    check(*both_modes(net, predict))


def test_step_head_agrees_in_eval_mode(sparse, tmp_path):
    from pipelines.train_head import train_head
    head = train_head(sparse, tmp_path, "fused", epochs=1, batch_size=32, milestones=(5,), sized=False).model
    z, mask, y = training_split(sparse)
    rows, labels = z["fused"][mask], y[:, None].expand_as(mask)[mask]
    check(*both_modes(head, lambda m: (m(rows).argmax(1) == labels).float().mean().item()))


def test_samplers_agree_in_eval_mode(store, tmp_path):
    from pipelines.train_sampler import train_sampler
    sampler = train_sampler(store, tmp_path, "audio", "ac", epochs=2, batch_size=12, milestones=(5,), sized=False,
                            say=lambda s: None).model
    z, mask, y = training_split(store)
    rows, labels = z["audio"][mask], y[:, None].expand_as(mask)[mask]
    check(*both_modes(sampler, lambda m: (m(rows).argmax(1) == labels).float().mean().item()))
    # SAL-CL: its saliency logit ranks the steps the same way in both modes (no BN drift in the ranking)
    ranker = train_sampler(store, tmp_path, "audio", "sal-cl", epochs=2, batch_size=4, milestones=(5,), sized=False,
                           say=lambda s: None).model
    with torch.no_grad():
        a = copy.deepcopy(ranker).train()(rows)
        b = ranker.eval()(rows)
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert corr > 0.9, corr


def test_avgn_agrees_in_eval_mode(store, tmp_path):
    from pipelines.train_avgn import train_avgn
    model = train_avgn(store, tmp_path, layers=1, heads=2, dim=32, epochs=6, batch_size=4, milestones=(10,),
                       sized=False).model
    videos = [store.read_video(v) for v in store.video_ids()]
    videos = [v for v in videos if v.attrs["split"] == "train"]
    steps = [sample_steps(v.n_steps, 16) for v in videos]
    e_g = torch.stack([torch.from_numpy(v["image"].astype(np.float32))[s] for v, s in zip(videos, steps)])
    e_a = torch.stack([torch.from_numpy(v["audio"].astype(np.float32))[s] for v, s in zip(videos, steps)])
    y = torch.tensor([CLASSES.index(v.attrs["label"]) for v in videos])
    check(*both_modes(model, lambda m: (m.classify(e_g, e_a).argmax(1) == y).float().mean().item()))

"""The one checkpoint API of every trainer: ``<runs>/<name>.pt`` holding the kind, weights, config, training
history and the fingerprint of the store it was trained on; loading refuses a store that does not match."""
from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from featurestore.store import FeatureStore, StoreError

log = logging.getLogger(__name__)

DEFAULT_RUNS = "fs-runs"


def runs_dir(explicit: str | Path | None = None) -> Path:
    """Where checkpoints and bench outputs go: ``--runs``, else ``$FS_RUNS``, else ``./fs-runs``."""
    return Path(explicit or os.environ.get("FS_RUNS") or DEFAULT_RUNS)


def checkpoint_path(runs: Path, name: str) -> Path:
    """``<runs>/<name>.pt``."""
    return Path(runs) / f"{name}.pt"


def fingerprint(store: FeatureStore) -> dict:
    """What a checkpoint trained on ``store`` must find again to be used with a store."""
    a = store.attrs
    return {"schema_version": a.get("schema_version"), "dataset": a.get("dataset"), "classes": a.get("classes"),
            "models": {k: v.get("sha256") for k, v in a.get("provenance", {}).get("models", {}).items()}}


def check_fingerprint(saved: dict, store: FeatureStore, what: str) -> None:
    """Refuse a store whose schema, classes or feature-producing weights differ from the checkpoint's."""
    now = fingerprint(store)
    for key in ("schema_version", "dataset", "classes"):
        if saved.get(key) != now.get(key):
            raise StoreError(f"{what} was trained on a store with {key}={saved.get(key)!r:.60}, this store has "
                             f"{now.get(key)!r:.60}: retrain it on this store")
    for model, digest in saved.get("models", {}).items():
        if model in now["models"] and now["models"][model] != digest:
            raise StoreError(f"{what} was trained on {model} features with weights sha256 {digest}; this store's are "
                             f"{now['models'][model]}: retrain it on this store")


def save_checkpoint(runs: Path, name: str, kind: str, model: torch.nn.Module, store: FeatureStore, config: dict,
                    history: list[dict]) -> Path:
    """Write ``<runs>/<name>.pt`` atomically (a crash leaves the previous checkpoint); returns its path."""
    path = checkpoint_path(runs, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    torch.save({"kind": kind, "state_dict": model.state_dict(), "fingerprint": plain(fingerprint(store)),
                "config": plain(config), "history": plain(history)}, tmp)
    os.replace(tmp, path)
    log.debug(f"saved {kind} checkpoint {path}")
    return path


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays, tuples and paths turned into plain Python values, so that the
    checkpoint loads with ``weights_only=True``."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def load_checkpoint(runs: Path, name: str, kind: str, store: FeatureStore) -> dict:
    """The checkpoint ``<runs>/<name>.pt`` of ``kind``, refused when it was trained on a store unlike ``store``.

    Loaded with ``weights_only=True``: a checkpoint is tensors and plain values, and unpickling anything else from a
    runs folder would run code of whoever wrote the file."""
    path = checkpoint_path(runs, name)
    if not path.is_file():
        raise StoreError(f"no {kind} checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        text = " ".join(str(e).split())
        found = re.search(r"(unsupported GLOBAL|Unsupported global:?) ([\w.]+)", text)
        if found:                     # what the file asked to import and call: a pickle that runs code, or a foreign one
            raise StoreError(f"{path} is not a plain fs checkpoint: it asks to load {found.group(2)}, which fs never "
                             f"writes (not loaded; remove the file or retrain)") from None
        raise StoreError(f"{path} is not a readable checkpoint ({type(e).__name__}); retrain it") from None
    if not isinstance(ckpt, dict) or "fingerprint" not in ckpt:
        raise StoreError(f"{path} is not an fs checkpoint (no kind and store fingerprint); retrain it")
    if ckpt.get("kind") != kind:
        raise StoreError(f"{path} is a {ckpt.get('kind')} checkpoint, not {kind}")
    check_fingerprint(ckpt["fingerprint"], store, f"{kind} checkpoint {path}")
    log.debug(f"loaded {kind} checkpoint {path} (trained on a store like {store.path})")
    return ckpt


def load_model(runs: Path, name: str, kind: str, store: FeatureStore,
               build: Callable[[dict], torch.nn.Module]) -> tuple[torch.nn.Module, dict]:
    """(network rebuilt from the checkpoint's config by ``build`` with its weights loaded, in eval mode; config)."""
    ckpt = load_checkpoint(runs, name, kind, store)
    model = build(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt["config"]

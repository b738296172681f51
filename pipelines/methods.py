"""The method registry of ``fs bench``: one entry per method name, mapping it to one builder of its selectors.

A builder takes the :class:`BenchContext` (store, checkpoints, bench options, the shared cost description and
per-step heads) and returns the method's :class:`~models.selection.Selector` rows, in table order; a method whose
checkpoint is missing returns no rows and says how to train it. Adding a method is one entry here and one
``Selector`` class beside its model.

A method may also live outside fs (:func:`resolve_method`): ``fs bench --methods`` and ``fs show --methods`` take,
beside a registry name, the name of an entry point of group :data:`ENTRY_POINT_GROUP` that an installed package
registers, or ``pkg.module:attr``, a builder importable from ``sys.path``. Their rows come after the built-in rows,
with the role :data:`PLUGIN_ROLE`.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Callable, Iterable

import torch

from featurestore.constants import SPATIAL_INPUTS, STUDENT_DESCRIPTORS
from featurestore.cost import unit_gflops
from featurestore.store import FeatureStore
from models.avgn import AVGNSelector
from models.baselines import HeadSelector, LSTMSelector
from models.energy import ENERGY_SIGNALS, EnergySelector
from models.scsampler import COMBINATIONS, SamplerSelector, modality_features
from models.selection import Selector, UnitCosts
from models.skim import NonRecurrentSelector, SkimSelector
from pipelines.checkpoints import checkpoint_path
from pipelines.train_avgn import checkpoint_name as avgn_checkpoint, load_avgn
from pipelines.train_head import step_head
from pipelines.train_sampler import clip_classifier, load_sampler
from pipelines.train_skim import checkpoint_note, load_skim_model, train_command

log = logging.getLogger(__name__)


@dataclass
class BenchContext:
    """What every builder may use: the store, the checkpoints folder, the skimmer's bench options, the cost
    description, and the per-step heads and trained networks, each loaded (or trained) once per bench."""

    store: FeatureStore
    runs: Path
    subsample: int = 5
    steps: int = 3
    say: Callable[[str], None] = log.info
    _heads: dict = field(default_factory=dict)
    _nets: dict = field(default_factory=dict)
    _said: set = field(default_factory=set)

    def __post_init__(self) -> None:
        self.runs = Path(self.runs)

    @cached_property
    def costs(self) -> UnitCosts:
        return unit_gflops()

    @cached_property
    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.store.attrs["classes"])}

    @property
    def has_r2p1d(self) -> bool:
        return self.store.has_descriptor("r2p1d")

    @property
    def signals(self) -> tuple[str, ...]:
        """The signal arrays the store's videos hold (``loudness``, ``motion``; none in a store built before them)."""
        return tuple(self.store.attrs.get("signals", []))

    @property
    def has_spatial(self) -> bool:
        """Whether the store keeps the spatial glance's inputs (frames and the global map, --spatial-map)."""
        return {"frames", "image_map"} <= set(self.store.attrs.get("inputs", []))

    def has_signals(self, names: tuple[str, ...], rows: str) -> bool:
        """Whether the store holds the signal arrays ``names``; if not, say once (per ``rows``) which ``rows`` are
        skipped and how to get them."""
        missing = [n for n in names if n not in self.signals]
        if missing and rows not in self._said:
            self._said.add(rows)
            self.say(f"skipping {rows}: store {self.store.path} has no {', '.join(missing)} arrays (built before the "
                     f"signal arrays): re-extract into a new store (fs extract --store NEW) to get them")
        return not missing

    def head(self, feature: str = "fused") -> torch.nn.Module:
        """The per-step head on ``feature`` (R(2+1)D's is SCSampler's clip classifier f); trained on first use."""
        if feature not in self._heads:
            self._heads[feature] = (clip_classifier(self.store, self.runs, self.say) if feature == "r2p1d"
                                    else step_head(self.store, self.runs, feature, self.say))
        return self._heads[feature]

    def skim_model(self, model: str) -> torch.nn.Module | None:
        """A trained ``fs train-skim`` network by checkpoint name (``skim``, ``skim-fs``, ...), or None (said once,
        with how to train it); a checkpoint trained otherwise than its name now means is said too."""
        if model not in self._nets:
            path = checkpoint_path(self.runs, model)
            net, cfg = load_skim_model(self.store, self.runs, model) if path.is_file() else (None, {})
            self._nets[model] = net
            if net is None:
                self.say(f"skipping {model}: no checkpoint at {path} (train it: {train_command(model)})")
            elif checkpoint_note(model, cfg):
                self.say(checkpoint_note(model, cfg))
        return self._nets[model]

    def samplers(self) -> dict[tuple[str, str], torch.nn.Module]:
        """Every trained SCSampler ranker in the runs folder, by (modality, loss)."""
        if "samplers" not in self._nets:
            found = {}
            for path in sorted(self.runs.glob("sampler-*.pt")):
                model, cfg = load_sampler(self.store, self.runs, path.stem)
                found[(cfg["modality"], cfg["loss"])] = model
            self._nets["samplers"] = found
        return self._nets["samplers"]


Builder = Callable[[BenchContext], list[Selector]]


def bench_arrays(ctx: BenchContext, methods: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The arrays any bench row of ``methods`` may read: step times, the student's descriptors, r2p1d and the
    signals when the store holds them, and the spatial glance's frames and global maps (read from the video groups
    only when a row asks) for AVGN-SPATIAL."""
    spatial = SPATIAL_INPUTS if "AVGN-SPATIAL" in methods and ctx.has_spatial else ()
    return ("t",) + STUDENT_DESCRIPTORS + (("r2p1d",) if ctx.has_r2p1d else ()) + ctx.signals + spatial


def head_rule(name: str, rule: str) -> Builder:
    """Average the student's per-step head over the steps ``rule`` picks (the Listen to Look baselines)."""
    return lambda ctx: [HeadSelector(name, ctx.head("fused"), ctx.costs, rule=rule, class_index=ctx.class_index)]


ENERGY_ROWS = {"AUDIO-ENERGY": "audio", "MOTION-ENERGY": "motion", "AV-ENERGY": "av"}


def energy(name: str) -> Builder:
    """A signal-energy control: the top-K steps by loudness, motion or both (z-scored), recognised by UNIFORM's
    head; skipped, with one line for all of them, on a store without the signal arrays."""
    kind = ENERGY_ROWS[name]

    def build(ctx: BenchContext) -> list[Selector]:
        if not ctx.has_signals(ENERGY_SIGNALS[kind], "the energy controls (AUDIO-, MOTION-, AV-ENERGY)"):
            return []
        return [EnergySelector(name, ctx.head("fused"), ctx.costs, kind=kind)]
    return build


def skim_variant(model: str, label: str, **options) -> Builder:
    """ImgAud-Skimming (or an ablation) at the bench's s and T, unless ``options`` fix them."""
    def build(ctx: BenchContext) -> list[Selector]:
        net = ctx.skim_model(model)
        if net is None:
            return []
        opts = {"subsample": ctx.subsample, "steps": ctx.steps, **options}
        name = f"{label} (s={opts['subsample']}, T={opts['steps']})"
        return [SkimSelector(name, net, ctx.costs, **opts)]
    return build


def skim_network(model: str, name: str, selector: type) -> Builder:
    """A baseline trained by ``fs train-skim --model`` and read by its own selector (LSTM, NON-RECURRENT)."""
    def build(ctx: BenchContext) -> list[Selector]:
        net = ctx.skim_model(model)
        return [] if net is None else [selector(name, net, ctx.costs)]
    return build


AVGN_GRID = [(k, t_g) for k in (1, 4, 10) for t_g in (2, 4, 8, None)]
AVGN_ABLATIONS = {(True, True): "", (False, True): " no audio tokens", (True, False): " no L_mask"}


def avgn(ctx: BenchContext) -> list[Selector]:
    """AVGN rows: top-k by saliency with T_G glances over the k x T_G grid, and the ablations (no audio tokens,
    no L_mask) at k = 4 for every T_G."""
    out: list[Selector] = []
    for (audio_tokens, mask_loss), label in AVGN_ABLATIONS.items():
        name = avgn_checkpoint(audio_tokens, mask_loss)
        path = checkpoint_path(ctx.runs, name)
        if not path.is_file():
            ctx.say(f"skipping {name}: no checkpoint at {path} (fs train-avgn" +
                    ("" if audio_tokens else " --no-audio-tokens") + ("" if mask_loss else " --no-mask-loss") + ")")
            continue
        model, cfg = load_avgn(ctx.store, ctx.runs, name)
        grid = AVGN_GRID if not label else [(4, t_g) for t_g in (2, 4, 8, None)]
        for k, t_g in grid:
            out.append(AVGNSelector(f"AVGN{label} (k={k}, T_G={'all' if t_g is None else t_g})", model, ctx.costs,
                                    k=k, t_g=t_g, t=cfg["t"]))
    return out


AVGN_SPATIAL_LABELS = {"aespa": "AESPA + pi", "pi": "pi alone", "centre": "centre patch", "random": "random patch"}
"""Table 6's spatial glances, by the variant their checkpoint was trained with."""
AVGN_SPATIAL_GRID = {"aespa": [(k, t_g) for k in (4, 10) for t_g in (2, None)],
                     "pi": [(4, None), (10, None)], "centre": [(4, None), (10, None)], "random": [(4, None), (10, None)]}
"""The (k, T_G) each spatial variant is read at: the temporal rows' k = 4, 10 at T_G = all, and AESPA + pi at T_G = 2
too (the paper's '+' setting)."""
AVGN_EXITS = (0.9, 0.99)
"""Early-exit thresholds tau (FrameExit's gate on the running max softmax) of the '+' rows, at T_G = 2, k = 10."""


def avgn_spatial(ctx: BenchContext) -> list[Selector]:
    """AVGN with the spatial glance (fs train-avgn --spatial ...): Table 6's variants at the temporal rows' k and T_G,
    f_L's own accuracy (FC^L on the patches alone), and early-exit rows with their GFLOPs."""
    from models.avgn_spatial import AVGNSpatialSelector
    from pipelines.train_avgn import SPATIAL_CHECKPOINTS, load_avgn_spatial

    if not ctx.has_spatial:
        ctx.say(f"skipping AVGN-SPATIAL: store {ctx.store.path} has no frames and image_map (extract into a new "
                f"store with fs extract --keep-inputs --spatial-map)")
        return []
    out: list[Selector] = []
    for spatial, label in AVGN_SPATIAL_LABELS.items():
        name = SPATIAL_CHECKPOINTS[spatial]
        frozen = checkpoint_path(ctx.runs, f"{name}-frozen")
        if frozen.is_file():           # fs train-avgn --spatial ... --freeze-temporal: the temporal rows' own steps
            model, cfg = load_avgn_spatial(ctx.store, ctx.runs, f"{name}-frozen")
            out.extend(AVGNSpatialSelector(f"AVGN spatial {label}, temporal frozen (k={k}, T_G=all)", model,
                                           ctx.costs, k=k, t_g=None, t=cfg["t"]) for k in (4, 10))
        path = checkpoint_path(ctx.runs, name)
        if not path.is_file():
            ctx.say(f"skipping {name}: no checkpoint at {path} (fs train-avgn --spatial {spatial})")
            continue
        model, cfg = load_avgn_spatial(ctx.store, ctx.runs, name)
        for k, t_g in AVGN_SPATIAL_GRID[spatial]:
            out.append(AVGNSpatialSelector(f"AVGN spatial {label} (k={k}, T_G={'all' if t_g is None else t_g})",
                                           model, ctx.costs, k=k, t_g=t_g, t=cfg["t"]))
        if spatial == "aespa":
            out.append(AVGNSpatialSelector("AVGN spatial f_L alone (k=10, T_G=all)", model, ctx.costs, k=10, t_g=None,
                                           t=cfg["t"], head="local"))
            out.extend(AVGNSpatialSelector(f"AVGN+ spatial exit tau={tau} (k=10, T_G=2)", model, ctx.costs, k=10,
                                           t_g=2, t=cfg["t"], exit_threshold=tau) for tau in AVGN_EXITS)
    return out


COMBINATION_LABELS = {"convex-score": " (a=0.9)", "convex-list": " (a=0.8)", "union-list": " (K'=8)",
                      "intersect-list": ""}


SAMPLER_LABELS = {"av": "AV-joint-training", "av-motion": "AV(motion)-joint-training",
                  "av-cheap": "AV(cheap)-joint-training"}
COMBINATION_SIDES = (("visual", "audio", "AV"), ("motion", "audio", "AV(motion)"), ("motion", "spectrum", "AV(cheap)"))
"""The audio-visual combinations: their visual side (the image descriptor's sampler, or the motion signal's), their
audio side (the audio descriptor's, or the spectrum signal's) and the label of their rows. AV(cheap) is SCSampler's
cheap-visual + cheap-audio pair: no ResNet runs on a step until it is chosen."""
PREFERRED_LOSS = {"visual": "ac", "motion": "ac", "audio": "sal-rank", "spectrum": "sal-rank"}
"""The sampler a combination takes for each side when several losses were trained (any other when it is missing)."""
SIGNAL_SAMPLER_ROWS = {"motion": "the SCSampler rows on the motion signal",
                       "spectrum": "the SCSampler rows on the spectrum signal"}


def samplers(ctx: BenchContext) -> list[Selector]:
    """SCSampler rows: every trained sampler (each loss x modality: image, audio, motion, spectrum and the joint
    ones) and the AV combinations of :data:`COMBINATION_SIDES`, each recognised by the student head and, when the
    store has r2p1d, by the R(2+1)D head f. Samplers on a signal (motion, spectrum) are skipped (said once) on a
    store without it."""
    found = ctx.samplers()
    if not found:
        ctx.say(f"skipping SCSampler rows: no sampler checkpoints in {ctx.runs} (fs train-sampler --modality "
                f"audio|visual|motion|spectrum|av|av-motion|av-cheap --loss ac|sal-cl|sal-rank)")
        return []
    for signal, rows in SIGNAL_SAMPLER_ROWS.items():
        if any(signal in modality_features(m) for m, _ in found) and not ctx.has_signals((signal,), rows):
            found = {key: m for key, m in found.items() if signal not in modality_features(key[0])}

    def preferred(side: str) -> torch.nn.Module | None:
        return found.get((side, PREFERRED_LOSS[side])) or next((m for (mo, _), m in found.items() if mo == side),
                                                                 None)
    recognisers = [("student", "fused")] + ([("R(2+1)D", "r2p1d")] if ctx.has_r2p1d else [])
    out: list[Selector] = []
    for rec_name, feature in recognisers:
        recogniser = (ctx.head(feature), feature)
        for (modality, loss), model in sorted(found.items()):
            label = SAMPLER_LABELS.get(modality, modality)
            out.append(SamplerSelector(f"SCS {label} {loss.upper()} -> {rec_name}", {modality: model}, ctx.costs,
                                       recogniser))
        for visual_side, audio_side, prefix in COMBINATION_SIDES:
            visual, audio = preferred(visual_side), preferred(audio_side)
            if visual is None or audio is None:
                continue
            for combine in COMBINATIONS:
                out.append(SamplerSelector(f"SCS {prefix}-{combine}{COMBINATION_LABELS[combine]} -> {rec_name}",
                                           {visual_side: visual, audio_side: audio}, ctx.costs, recogniser,
                                           combine=combine))
    return out


def oracle_f(ctx: BenchContext) -> list[Selector]:
    """SCSampler's upper bound: the K steps where the R(2+1)D head f is most confident of the true class."""
    if not ctx.has_r2p1d:
        ctx.say("skipping ORACLE-F: the store has no r2p1d descriptors")
        return []
    return [HeadSelector("ORACLE-F (SCSampler upper bound)", ctx.head("r2p1d"), ctx.costs, feature="r2p1d",
                         rule="oracle", class_index=ctx.class_index)]


METHODS: dict[str, Builder] = {
    "RANDOM": head_rule("RANDOM", "random"),
    "UNIFORM": head_rule("UNIFORM", "uniform"),
    "FRONT": head_rule("FRONT", "front"),
    "CENTER": head_rule("CENTER", "center"),
    "END": head_rule("END", "end"),
    "DENSE": head_rule("DENSE", "dense"),
    "SCSAMPLER": head_rule("SCSAMPLER", "confidence"),
    "AUDIO-ENERGY": energy("AUDIO-ENERGY"),
    "MOTION-ENERGY": energy("MOTION-ENERGY"),
    "AV-ENERGY": energy("AV-ENERGY"),
    "LSTM": skim_network("lstm", "LSTM", LSTMSelector),
    "NON-RECURRENT": skim_network("non-recurrent", "NON-RECURRENT", NonRecurrentSelector),
    "SKIM": skim_variant("skim", "IMGAUD-SKIM"),
    "SKIM-DENSE": skim_variant("skim", "IMGAUD-SKIM", subsample=1, steps=10),
    "SKIM-ARGMAX": skim_variant("skim", "IMGAUD-SKIM argmax", hard=True),
    "SKIM-VISUAL": skim_variant("skim-visual", "IMGAUD-SKIM visual indexing"),
    "SKIM-SINGLE": skim_variant("skim-single", "IMGAUD-SKIM single query"),
    "SKIM-FS": skim_variant("skim-fs", "IMGAUD-SKIM fs-protocol"),
    "ORACLE": head_rule("ORACLE (upper bound)", "oracle"),
    "AVGN": avgn,
    "AVGN-SPATIAL": avgn_spatial,
    "SAMPLERS": samplers,
    "ORACLE-F": oracle_f,
}


CONTROLS = tuple(ENERGY_ROWS)
"""The signal-energy controls: no learned model, the floor a learned selector must clear."""
LEARNED = ("LSTM", "NON-RECURRENT", "SKIM", "SKIM-FS", "SKIM-DENSE", "SKIM-ARGMAX", "SKIM-VISUAL", "SKIM-SINGLE",
           "AVGN", "AVGN-SPATIAL", "SAMPLERS")
"""The methods whose steps a trained network picks (the skimmer and its ablations, LSTM, AVGN, SCSampler's rankers);
the bench marks their rows that do not beat the best energy control."""


PLUGIN_ROLE = "plugin"
"""The role of a row built outside fs. The bench cannot tell whether a plug-in learned anything, and the energy
controls are the floor that every new selector must clear, so plug-in rows are marked against them as learned rows are
(:func:`~pipelines.report.below_energy`)."""


def role(method: str) -> str:
    """A method's role in the table: "control" (energy), "learned" (a trained selector), "baseline" (the other
    registry methods: head rules, oracles) or "plugin" (a method resolved outside the registry)."""
    if method not in METHODS:
        return PLUGIN_ROLE
    return "control" if method in CONTROLS else "learned" if method in LEARNED else "baseline"


# --- plug-in methods --------------------------------------------------------------------------------------------------

ENTRY_POINT_GROUP = "fs.methods"
"""The entry-point group under which an installed package registers builders: the entry point's name is the method
name, its object a :data:`Builder`."""
_MODULE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class MethodError(ValueError):
    """A ``--methods`` item that cannot be resolved to a builder, or a builder that returned something else than
    selectors."""


def installed_methods() -> dict[str, EntryPoint]:
    """The builders installed packages register under :data:`ENTRY_POINT_GROUP`, by method name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def is_module_spec(spec: str) -> bool:
    """Whether ``spec`` reads as ``pkg.module:attr``."""
    return bool(_MODULE_SPEC.match(spec))


def parse_methods(text: str) -> tuple[str, ...]:
    """The ``--methods`` items of a comma list: registry names in any case (as the registry spells them), ``all``
    for every registry method, anything else (entry-point names, ``pkg.module:attr``) as written."""
    out: list[str] = []
    for item in (m.strip() for m in text.split(",")):
        if not item:
            continue
        if item.lower() == "all":
            out.extend(m for m in METHODS if m not in out)
        elif item.upper() in METHODS:
            out.append(item.upper())
        else:
            out.append(item)
    return tuple(out)


def _import_hint(module: str, error: BaseException) -> str:
    """What went wrong importing a plug-in's ``module``: not found (and where it was looked for), a module it imports
    missing, or an error raised by its own code."""
    said = f"{type(error).__name__}: {error}"
    if not isinstance(error, ModuleNotFoundError):
        return f"importing module {module!r} failed in its own code: {said}"
    if error.name and module != error.name and not module.startswith(error.name + "."):
        return f"module {module!r} was found, but a module it imports is missing: {said} (install it)"
    return (f"cannot import module {module!r}: {said} (a plug-in module must be importable: it is looked for on "
            f"sys.path and in the working folder {os.getcwd()}; run fs from the folder that holds its package, add "
            f"that folder to PYTHONPATH, or pip install the package)")


def _load_spec(spec: str) -> object:
    """The object ``pkg.module:attr`` names (``attr`` may be dotted: ``module:Class.build``); the working folder is
    searched after ``sys.path`` (the ``fs`` script itself does not put it there)."""
    module_name, attr = spec.split(":", 1)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())        # as python -m, the working folder is importable (after installed packages)
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:           # a plug-in module may fail in any way while it runs; say which and how
        raise MethodError(f"method {spec!r}: {_import_hint(module_name, e)}") from e
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = module_name + "".join("." + p for p in attr.split(".")[:i])
            public = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
            raise MethodError(f"method {spec!r}: {where} has no attribute {part!r}"
                              + (f" (its callables: {', '.join(public[:12])})" if public else ""))
        obj = getattr(obj, part)
    return obj


def _load_entry_point(name: str, ep: EntryPoint) -> object:
    try:
        return ep.load()
    except Exception as e:
        dist = getattr(getattr(ep, "dist", None), "name", None)
        raise MethodError(f"method {name!r}: the entry point {ep.value!r} of group {ENTRY_POINT_GROUP}"
                          + (f" (package {dist})" if dist else "")
                          + f" does not load: {type(e).__name__}: {e}") from e


def is_selector(obj: object) -> bool:
    """Whether ``obj`` has what the bench reads of a selector: a string ``name`` and a callable ``select``."""
    return not isinstance(obj, type) and isinstance(getattr(obj, "name", None), str) \
        and callable(getattr(obj, "select", None))


def as_builder(obj: object, method: str) -> Builder:
    """``obj`` (a :data:`Builder`, or a callable of the context returning one selector) as a builder whose rows are
    checked: each must be a selector (:func:`is_selector`)."""
    if isinstance(obj, type) and hasattr(obj, "select"):
        raise MethodError(f"method {method!r} is the Selector class {obj.__name__}, not a builder: give a function "
                          f"def build(ctx): return [{obj.__name__}(...)] that makes its rows from the bench context")
    if is_selector(obj):
        raise MethodError(f"method {method!r} is a Selector instance ({obj.name!r}), not a builder: give a function "
                          f"def build(ctx) that makes it from the bench context (its heads, costs, store)")
    if not callable(obj):
        raise MethodError(f"method {method!r} is not callable (it is {type(obj).__name__} {obj!r:.40}): a builder "
                          f"is a function of the bench context returning a list of selectors")

    def build(ctx: BenchContext) -> list[Selector]:
        rows = obj(ctx)
        rows = [rows] if is_selector(rows) else rows
        if rows is None or isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
            raise MethodError(f"method {method!r}: its builder returned {type(rows).__name__}, not a list of "
                              f"selectors")
        rows = list(rows)
        for row in rows:
            if not is_selector(row):
                missing = [a for a, ok in (("name", isinstance(getattr(row, "name", None), str)),
                                           ("select", callable(getattr(row, "select", None)))) if not ok]
                raise MethodError(f"method {method!r}: its builder returned a {type(row).__name__}, which is not a "
                                  f"selector (no {' or '.join(missing) or 'instance'}: a selector has a string "
                                  f"`name` and a `select(video)` method)")
        return rows
    return build


def resolve_method(spec: str) -> Builder:
    """The builder of one ``--methods`` item: a registry name, else an installed entry point of that name (group
    :data:`ENTRY_POINT_GROUP`), else ``pkg.module:attr`` imported from ``sys.path``."""
    if spec in METHODS:
        return METHODS[spec]
    installed = installed_methods()
    if spec in installed:
        return as_builder(_load_entry_point(spec, installed[spec]), spec)
    if is_module_spec(spec):
        return as_builder(_load_spec(spec), spec)
    raise MethodError(f"unknown method {spec!r}; choose from {', '.join(METHODS)}"
                      + (f", the installed {', '.join(installed)}" if installed else "")
                      + ", or name a builder as pkg.module:attr (fs bench --list-methods)")


def list_methods() -> list[str]:
    """Lines for ``fs bench --list-methods``: the registry's methods with their role, then the installed entry
    points with the package and object each comes from."""
    lines = ["built-in methods (role):"] + [f"  {name:<16} {role(name)}" for name in METHODS]
    installed = installed_methods()
    lines.append(f"installed methods (entry points of group {ENTRY_POINT_GROUP}):" if installed else
                 f"installed methods: none (a package registers one under the entry-point group {ENTRY_POINT_GROUP})")
    for name, ep in sorted(installed.items()):
        dist = getattr(getattr(ep, "dist", None), "name", None)
        shadow = "  (shadowed by the built-in of that name)" if name.upper() in METHODS else ""
        lines.append(f"  {name:<16} {ep.value}" + (f"  [{dist}]" if dist else "") + shadow)
    lines.append("any other builder: pkg.module:attr, importable from sys.path (e.g. examples.custom_selector:build "
                 "from the repository root)")
    return lines


def check_methods(methods: tuple[str, ...]) -> None:
    """Refuse items that resolve to no builder (:func:`resolve_method`), saying why."""
    for spec in methods:
        resolve_method(spec)


def build_rows(ctx: BenchContext, methods: tuple[str, ...]) -> list[tuple[str, Selector]]:
    """(method, selector) of every row of ``methods``: the registry's in registry (table) order, then the plug-ins'
    in the order given. A plug-in row may not share its name with another row."""
    builders = {spec: resolve_method(spec) for spec in methods}
    rows = [(name, sel) for name, build in METHODS.items() if name in builders for sel in build(ctx)]
    for spec, build in builders.items():
        if spec not in METHODS:
            rows.extend((spec, sel) for sel in build(ctx))
    by_name: dict[str, list[str]] = {}
    for method, sel in rows:
        by_name.setdefault(sel.name, []).append(method)
    for name, makers in by_name.items():
        if len(makers) > 1 and any(m not in METHODS for m in makers):
            raise MethodError(f"two rows are named {name!r} (from {' and '.join(dict.fromkeys(makers))}): a row's "
                              f"name is its key in bench.csv and fs show; give the plug-in's selector another name")
    return rows


def build_selectors(ctx: BenchContext, methods: tuple[str, ...]) -> list[Selector]:
    """The selectors of ``methods``, in table order (:func:`build_rows`)."""
    return [sel for _, sel in build_rows(ctx, methods)]

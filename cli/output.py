"""Output a person can steer: ``-v`` / ``-q`` on the group and on every verb (stdlib logging written through
click), and ``--config FILE`` (TOML or YAML, one table per command) as click's ``default_map``; ``fs bench`` keeps
the options it ran with beside its results (:func:`write_options`) so that ``fs --config`` repeats the run.

The library (featurestore, manifests, pipelines) logs; the CLI alone decides where log records go. A command's own
result (tables, the paths it wrote) is ``click.echo`` to stdout and is not a log record."""
from __future__ import annotations

import difflib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import click

FS_LOGGERS = ("cli", "featurestore", "manifests", "models", "pipelines", "fs")
"""The loggers of fs's packages: the CLI sets their level and hands their records to click; other libraries'
loggers (dask, matplotlib...) are left alone."""

PLAIN_FORMAT = "%(message)s"
DEBUG_FORMAT = "%(levelname)s %(name)s: %(message)s"

_STATE = "fs.logging"            # key of ctx.meta (shared by a command's contexts) holding the installed handler
_LEVEL = "fs.level"

CONFIG_SUFFIXES = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}
NOT_CONFIGURABLE = ("help", "config")
OPTIONS_FILE = "options.toml"


class ClickEchoHandler(logging.Handler):
    """Writes each record with ``click.echo(err=True)``, the stream resolved when the record is emitted (so click's
    CliRunner captures it), above any progress bar drawn there, every line made safe for a terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        from featurestore.text import printable

        try:
            text = "\n".join(printable(line) for line in self.format(record).split("\n"))
            with tqdm.external_write_mode(file=sys.stderr):
                click.echo(text, err=True)
        except Exception:  # noqa: BLE001 - logging's convention: a failing handler never stops the program
            self.handleError(record)


def set_verbosity(ctx: click.Context, level: int | None = None) -> None:
    """Hand fs's log records to click (once per command line; undone when the command ends) and set their level:
    ``None`` keeps the level set so far (INFO by default)."""
    meta = ctx.meta
    if _STATE not in meta:
        loggers = [logging.getLogger(name) for name in FS_LOGGERS]
        saved = [(lg, lg.level) for lg in loggers]
        handler = ClickEchoHandler()
        for lg in loggers:
            lg.addHandler(handler)

        def restore() -> None:
            for lg, was in saved:
                lg.removeHandler(handler)
                lg.setLevel(was)
        meta[_STATE] = handler
        meta[_LEVEL] = logging.INFO
        ctx.find_root().call_on_close(restore)
    if level is not None:
        meta[_LEVEL] = level
    level = meta[_LEVEL]
    meta[_STATE].setFormatter(logging.Formatter(DEBUG_FORMAT if level <= logging.DEBUG else PLAIN_FORMAT))
    for name in FS_LOGGERS:
        logging.getLogger(name).setLevel(level)


def _verbosity_callback(level: int):
    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        set_verbosity(ctx, level if value else None)
    return callback


def verbosity_options(f):
    """``-v/--verbose`` (DEBUG: level and logger name on each line) and ``-q/--quiet`` (WARNING: only warnings,
    errors and the command's result), for the group and every verb: ``fs -q bench`` and ``fs bench -q`` alike."""
    f = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_verbosity_callback(logging.WARNING),
                     help="Only warnings, errors and the command's result (no info lines, no progress bars).")(f)
    return click.option("-v", "--verbose", is_flag=True, expose_value=False,
                        callback=_verbosity_callback(logging.DEBUG),
                        help="Debug lines too, each with its level and logger.")(f)


def read_config(path: str | Path) -> dict:
    """The mapping a TOML (``.toml``) or YAML (``.yaml``, ``.yml``) file holds."""
    path = Path(path)
    kind = CONFIG_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise click.BadParameter(f"{path}: a config file ends in {', '.join(CONFIG_SUFFIXES)}")
    try:
        text = path.read_text()
    except OSError as e:
        raise click.BadParameter(f"{path}: {e.strerror or e}") from None
    try:
        if kind == "TOML":
            try:
                import tomllib
            except ImportError:            # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - tomllib and yaml each raise their own errors
        raise click.BadParameter(f"{path}: not valid {kind}: {str(e).splitlines()[0] if str(e) else e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: expected one table per command (e.g. [bench]), got a {type(data).__name__}")
    return data


def _keys(command: click.Command) -> dict[str, click.Parameter]:
    """Every name a config table may give each of ``command``'s parameters: the option's names without dashes,
    with - or _, and the parameter's own name."""
    keys: dict[str, click.Parameter] = {}
    for p in command.params:
        if p.name in NOT_CONFIGURABLE or p.name is None:
            continue
        names = [p.name] + [o.lstrip("-") for o in p.opts if o.startswith("--")]
        for n in names:
            keys[n.replace("_", "-")] = keys[n.replace("-", "_")] = p
    return keys


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def config_table(command: click.Command, table: Any, where: str) -> dict[str, Any]:
    """``table`` (one command's) as a click ``default_map`` for ``command``, keys turned into parameter names; an
    unknown key is refused. A list given for a one-value option is joined with commas (``milestones = [10, 20]``)."""
    if not isinstance(table, dict):
        raise click.BadParameter(f"{where}: expected a table of options, got {table!r}")
    keys = _keys(command)
    out: dict[str, Any] = {}
    for key, value in table.items():
        p = keys.get(str(key))
        if p is None:
            shown = sorted({k for k in keys if "_" not in k})
            raise click.BadParameter(f"{where}: unknown option {key!r}{_suggest(str(key), shown)}; "
                                     f"known: {', '.join(shown)}")
        if isinstance(value, list) and not getattr(p, "multiple", False) and p.nargs == 1:
            value = ",".join(str(v) for v in value)
        out[p.name] = value
    return out


def config_default_map(group: click.Group, data: dict, source: str) -> dict[str, dict]:
    """Every table of a config file checked against ``group``'s commands: {command: default_map}. A table naming
    no command, or a key no option of its command has, is refused (a typo must not be silently ignored)."""
    out = {}
    for name, table in data.items():
        command = group.commands.get(str(name)) or group.commands.get(str(name).replace("_", "-"))
        if command is None:
            raise click.BadParameter(f"{source}: unknown command [{name}]{_suggest(str(name), group.commands)}; "
                                     f"commands: {', '.join(sorted(group.commands))}")
        out[command.name] = config_table(command, table, f"{source} [{command.name}]")
    return out


def _group_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.default_map = {**(ctx.default_map or {}), **config_default_map(ctx.command, read_config(value), value)}


def _verb_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if not value:
        return
    data = read_config(value)
    group = ctx.parent.command if ctx.parent is not None and isinstance(ctx.parent.command, click.Group) else None
    if group is not None:
        tables = config_default_map(group, data, value)
    else:
        tables = {k: config_table(ctx.command, t, f"{value} [{k}]") for k, t in data.items() if k == ctx.info_name}
    ctx.default_map = {**(ctx.default_map or {}), **tables.get(ctx.command.name, {})}


def config_option(group: bool = False):
    """``--config FILE``: option defaults from a TOML or YAML file, one table per command (``[bench]``,
    ``[train-skim]``...), keys the option names (with - or _); options given on the command line win. On a verb,
    the verb's table is used (the others are checked too); on the group, every verb's."""
    return click.option("--config", type=click.Path(dir_okay=False, exists=True), default=None, is_eager=True,
                        expose_value=False, callback=_group_config if group else _verb_config,
                        help="Defaults of the options from a TOML or YAML file: one table per command ([bench] "
                             "subsample = 5); the command line overrides it.")


class FsGroup(click.Group):
    """A group whose every verb gets ``-v``, ``-q`` and ``--config`` (the verb's own options come first in help)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not {p.name for p in cmd.params} & {"verbose", "quiet", "config"}:
            cmd.params.extend(_shared_params())
        super().add_command(cmd, name)


def _shared_params() -> list[click.Parameter]:
    """Fresh ``-v``, ``-q`` and ``--config`` parameters for one verb."""
    @verbosity_options
    @config_option()
    def probe() -> None:
        """Never run: carries the parameters."""
    return click.command()(probe).params


def _plain(name: str, value: Any) -> Any:
    """``value`` as a config file would give it (paths absolute, tuples comma-joined), None when it has none."""
    if value is None:
        return None
    if isinstance(value, Path) or name in ("store", "runs", "out", "student"):
        return os.path.abspath(os.fspath(value))
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else "nan" if math.isnan(value) else repr(value)
    return json.dumps(str(value))          # a TOML basic string: JSON's escapes are TOML's


def options_record(ctx: click.Context) -> dict[str, Any]:
    """The options ``ctx``'s command ran with, keyed by option name (every one, defaults too, so that a later
    change of fs's defaults does not change a repeated run); options without a value are left out."""
    out = {}
    for p in ctx.command.params:
        if not p.expose_value or p.name in NOT_CONFIGURABLE or p.name not in ctx.params:
            continue
        value = _plain(p.name, ctx.params[p.name])
        if value is not None:
            key = next((o.lstrip("-") for o in p.opts if o.startswith("--")), p.name)
            out[key] = value
    return out


def write_options(ctx: click.Context, folder: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Write ``folder/options.toml``: one table, ``[<command>]``, of the options the run used (``overrides`` by
    option name replace recorded values, e.g. a resolved default); ``fs --config <it> <command>`` repeats it."""
    record = {**options_record(ctx), **(overrides or {})}
    name = ctx.info_name or ctx.command.name
    lines = [f"# the options of the `fs {name}` run that wrote this folder; repeat it with:",
             f"#   fs --config {folder / OPTIONS_FILE} {name}", f"[{name}]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in record.items() if v is not None]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / OPTIONS_FILE
    path.write_text("\n".join(lines) + "\n")
    return path

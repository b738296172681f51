"""The CLI reference (docs/cli.md), generated from the click commands so that it cannot drift from them.

``python -m cli.reference > docs/cli.md`` prints it; ``python -m cli.reference --write`` writes it in place.
The text depends only on the commands' declarations: no terminal width, no environment variable, no callable
default is ever evaluated (a default computed at run time is shown by its ``show_default`` text).
"""
from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import click

_UNSET = getattr(click.core, "UNSET", None)      # click >= 8.3 marks a parameter without a default so
REFERENCE_PATH = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
REGENERATE = "python -m cli.reference --write"


def _paragraphs(text: str | None) -> str:
    """A docstring or help text as markdown paragraphs: each paragraph's line breaks joined, blank lines kept.

    Click's ``\\b`` (keep this paragraph as written) keeps its lines; text after ``\\f`` is not help."""
    if not text:
        return ""
    text = inspect.cleandoc(text).split("\f")[0]
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        if block.startswith("\b"):
            out.append("\n".join(line.rstrip() for line in block[1:].strip("\n").splitlines()))
        else:
            out.append(" ".join(line.strip() for line in block.splitlines()))
    return "\n\n".join(out)


def _type_name(param: click.Parameter) -> str:
    """The value a parameter takes: choices, a range, or click's type name (empty for a flag)."""
    t = param.type
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    if isinstance(t, click.Choice):
        return "|".join(str(c) for c in t.choices)
    if isinstance(t, (click.IntRange, click.FloatRange)):
        return f"{t.name.upper()} {t._describe_range()}"
    return t.name.upper()


def _default(param: click.Parameter) -> str:
    """The default as the help would show it, never computed: the ``show_default`` text, else the literal."""
    if isinstance(param, click.Option) and isinstance(param.show_default, str):
        return param.show_default
    default = param.default
    if default is _UNSET:
        default = None
    if callable(default):                       # never called: its docstring says what it computes
        return (inspect.getdoc(default) or "computed at run time").splitlines()[0]
    if isinstance(param, click.Option) and param.is_flag:
        return "on" if default and param.is_bool_flag else ""       # a flag is off unless it says otherwise
    if default is None or default == () or default == "":
        return ""
    if isinstance(default, (list, tuple)):
        return ", ".join(str(d) for d in default)
    return str(default)


def _option_line(param: click.Option) -> str:
    names = " / ".join(param.opts + param.secondary_opts)
    kind = _type_name(param)
    bits = [f"`{names}`" + (f" {kind}" if kind else "")]
    extras = []
    default = _default(param)
    if default:
        extras.append(f"default: `{default}`")
    if param.required:
        extras.append("required")
    if param.multiple:
        extras.append("repeatable")
    if param.envvar:
        extras.append(f"env: `{param.envvar}`")
    if extras:
        bits.append("(" + "; ".join(extras) + ")")
    help_text = _paragraphs(param.help)
    return "- " + " ".join(bits) + (f": {help_text}" if help_text else "")


def _usage(command: click.Command, path: str) -> str:
    ctx = click.Context(command, info_name=path.split()[-1])
    pieces = command.collect_usage_pieces(ctx)
    return " ".join([path, *pieces])


def _command_section(command: click.Command, path: str, level: int) -> list[str]:
    lines = [f"{'#' * level} `{path}`", "", "```", _usage(command, path), "```", ""]
    help_text = _paragraphs(command.help)
    if help_text:
        lines += [help_text, ""]
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
    if arguments:
        lines.append("Arguments:")
        lines.append("")
        for a in arguments:
            extras = [e for e in (_type_name(a), "required" if a.required else "optional",
                                  f"default: `{_default(a)}`" if _default(a) else "") if e]
            lines.append(f"- `{a.human_readable_name}` ({'; '.join(extras)})")
        lines.append("")
    if options:
        lines.append("Options:")
        lines.append("")
        lines += [_option_line(o) for o in options]
        lines.append("")
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            sub = command.commands[name]
            if not sub.hidden:
                lines += _command_section(sub, f"{path} {name}", level + 1)
    return lines


def cli_reference(group: click.Group | None = None, prog: str = "fs") -> str:
    """Markdown reference of every command of ``group`` (default: the ``fs`` CLI): usage, help, each option's type,
    default and help; commands in alphabetical order, deterministic whatever the terminal or environment."""
    if group is None:
        from cli.main import main as group
    lines = [f"# `{prog}` command reference", "",
             f"<!-- Generated by `{REGENERATE}` from the click commands in cli/; do not edit by hand. -->", "",
             f"Every command also takes `-h` / `--help`. Commands: "
             + ", ".join(f"[`{n}`](#{_anchor(f'{prog} {n}')})" for n in sorted(group.commands)
                         if not group.commands[n].hidden) + ".", ""]
    lines += _command_section(group, prog, 2)
    return "\n".join(lines).rstrip("\n") + "\n"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading ``\\`heading\\```: lower case, spaces to dashes, punctuation dropped."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    """Print the reference, or write it to docs/cli.md with ``--write``."""
    argv = sys.argv[1:] if argv is None else argv
    text = cli_reference()
    if argv == ["--write"]:
        REFERENCE_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {REFERENCE_PATH}")
    elif not argv:
        sys.stdout.write(text)
    else:
        print("usage: python -m cli.reference [--write]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

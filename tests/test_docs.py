"""The docs stay true: the CLI reference is the generated one, README stays the short front door with the commands
.ci/run relies on, and every relative link in README.md and docs/*.md resolves (file and heading)."""
from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from cli.reference import REFERENCE_PATH, REGENERATE, cli_reference

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_BYTES = 12_500                       # "about 12 KB": the front door, the rest lives in docs/

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def test_cli_reference_is_current():
    assert REFERENCE_PATH.exists(), f"docs/cli.md is missing: run `{REGENERATE}`"
    assert REFERENCE_PATH.read_text(encoding="utf-8") == cli_reference(), \
        f"docs/cli.md is stale (a command or option changed): run `{REGENERATE}`"


def test_cli_reference_lists_every_command_and_option():
    from cli.main import main
    text = cli_reference()
    for name, command in main.commands.items():
        assert f"### `fs {name}`" in text
        for p in command.params:
            if isinstance(p, click.Option) and not p.hidden:
                assert f"`{' / '.join(p.opts + p.secondary_opts)}`" in text, (name, p.opts)


def test_cli_reference_renders_types_defaults_and_help_without_calling_defaults(monkeypatch):
    calls = []

    def computed() -> str:
        """$X or x.zarr"""
        calls.append(1)
        return "never shown"

    @click.group()
    def grp() -> None:
        """A group."""

    @grp.command("go")
    @click.argument("where", default=computed, required=False)
    @click.option("--mode", type=click.Choice(["a", "b"]), default="b", show_default=True, help="Mode | pipe.")
    @click.option("--n", type=click.IntRange(min=1), default=3, help="How many\n    over two lines.")
    @click.option("--fast", is_flag=True, help="Go fast.")
    @click.option("--when", default=0, show_default="at once")
    def go(where, mode, n, fast, when) -> None:
        """Go somewhere.

        Second paragraph."""

    monkeypatch.setenv("COLUMNS", "20")
    text = cli_reference(grp, prog="tool")
    assert calls == []
    assert "### `tool go`\n\n```\ntool go [OPTIONS] [WHERE]\n```\n\nGo somewhere.\n\nSecond paragraph.\n" in text
    assert "- `WHERE` (TEXT; optional; default: `$X or x.zarr`)" in text
    assert "- `--mode` a|b (default: `b`): Mode | pipe." in text
    assert "- `--n` INTEGER RANGE x>=1 (default: `3`): How many over two lines." in text
    assert "- `--fast` flag: Go fast." in text
    assert "- `--when` INTEGER (default: `at once`)" in text
    assert "[`go`](#tool-go)" in text


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings (outside code fences), with -1, -2 for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)                       # inline code is not a link
    return [a or b for a, b in LINK.findall(text)]


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(path):
    bad = []
    for target in _links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):             # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not bad, f"{path.name}: broken links:\n" + "\n".join(bad)


def test_link_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Top\n\nSee [a](missing.md), [b](#top), [c](#nowhere) and `[d](ignored.md)`.\n")
    assert _links(page) == ["missing.md", "#top", "#nowhere"]
    assert _anchors(page) == {"top"}


INSTALL_AND_GO = "```sh\nbash .ci/install && .venv/bin/fs extract\n```"
INSTALL_AND_TEST = "```sh\nbash .ci/install && .venv/bin/python -m pytest -q tests\n```"


def test_readme_is_the_short_front_door():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes (at most {README_MAX_BYTES}): move detail to docs/"


def test_readme_keeps_the_two_set_up_commands_that_ci_runs():
    text = README.read_text(encoding="utf-8")
    assert INSTALL_AND_GO in text and INSTALL_AND_TEST in text
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash .ci/install" in ci and ".venv/bin/python -m pytest -q tests" in ci     # CI runs README's command


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _links(README)}
    unlinked = [p.name for p in DOCS if p.resolve() not in linked]
    assert not unlinked, f"docs pages README.md does not link: {unlinked}"


def test_readme_manifest_example_is_a_valid_manifest(tmp_path):
    from manifests.schema import read_manifest
    blocks = re.findall(r"```csv\n(.*?)\n\s*```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "README's 'Your own videos' shows one manifest (a ```csv block)"
    (tmp_path / "manifest.csv").write_text("\n".join(line.strip() for line in blocks[0].splitlines()) + "\n")
    df = read_manifest(tmp_path / "manifest.csv", check_files=False)
    assert list(df.columns[:4]) == ["video_id", "path", "label", "split"] and len(df) >= 2

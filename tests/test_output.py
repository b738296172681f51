"""Output a person can steer: -v / -q on the group and every verb, library code that logs, one progress style,
--config FILE (TOML or YAML) as click's default_map, and bench's options.toml that repeats a run."""
import io
import json
import logging

import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import main
from cli.output import FS_LOGGERS, OPTIONS_FILE, read_config
from featurestore.progress import progress_bar
from pipelines.methods import BenchContext, build_rows
from tests.test_bench import fabricate_store

SKIP_LINE = "fs train-skim --model skim"          # the info line of a bench without a trained skimmer


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return fabricate_store(tmp_path_factory.mktemp("out") / "s.zarr", n_videos=12, seed=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, store):
    """A runs folder whose per-step head is trained once (UNIFORM's), so that each bench below only evaluates."""
    runs = tmp_path_factory.mktemp("runs")
    res = CliRunner().invoke(main, ["train-head", "--store", str(store.path), "--runs", str(runs), "--epochs", "2",
                                    "--batch-size", "64", "--milestones", "1"])
    assert res.exit_code == 0, res.output
    return runs


def bench(store, runs, out, *extra, before=()):
    return CliRunner().invoke(main, [*before, "bench", "--store", str(store.path), "--runs", str(runs), "--out",
                                     str(out), "--methods", "uniform,skim", "--no-sweep", *extra])


@pytest.mark.parametrize("where", ["group", "verb"])
def test_quiet_silences_info_lines_but_keeps_the_result(store, runs, tmp_path, where):
    loud = bench(store, runs, tmp_path / "loud")
    assert loud.exit_code == 0, loud.output
    assert SKIP_LINE in loud.output and "evaluating 1 selectors" in loud.output
    quiet = bench(store, runs, tmp_path / "quiet", *(["-q"] if where == "verb" else []),
                  before=["-q"] if where == "group" else [])
    assert quiet.exit_code == 0, quiet.output
    assert SKIP_LINE not in quiet.output and "evaluating" not in quiet.output
    assert "UNIFORM" in quiet.output and "wrote " in quiet.output          # the table and the paths written stay
    assert (tmp_path / "quiet" / "bench.csv").is_file()


def test_verbose_shows_debug_lines_with_level_and_logger(store, runs, tmp_path):
    plain = bench(store, runs, tmp_path / "plain")
    assert plain.exit_code == 0 and "DEBUG" not in plain.output
    res = bench(store, runs, tmp_path / "v", "-v")
    assert res.exit_code == 0, res.output
    assert "DEBUG pipelines.checkpoints: loaded head checkpoint" in res.output
    assert "INFO pipelines.bench: skipping skim: no checkpoint" in res.output


def test_the_command_leaves_logging_as_it_found_it(store, runs, tmp_path):
    before = {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers)) for name in FS_LOGGERS}
    assert bench(store, runs, tmp_path / "q", before=["-v"]).exit_code == 0
    assert {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers))
            for name in FS_LOGGERS} == before


def test_a_library_function_logs_instead_of_printing(store, tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="pipelines"):
        assert build_rows(BenchContext(store, tmp_path / "none"), ("SKIM",)) == []
    said = [r for r in caplog.records if r.name == "pipelines.methods"]
    assert len(said) == 1 and said[0].levelno == logging.INFO and SKIP_LINE in said[0].getMessage()
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_progress_bars_show_on_a_terminal_at_info_only(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    logger = logging.getLogger("featurestore")
    was = logger.level
    try:
        monkeypatch.setattr("sys.stderr", Terminal())
        logger.setLevel(logging.INFO)
        assert not progress_bar(3, "x").disable
        logger.setLevel(logging.WARNING)                                # fs -q
        assert progress_bar(3, "x").disable
        logger.setLevel(logging.INFO)
        monkeypatch.setattr("sys.stderr", io.StringIO())                 # a log file or a pipe: no bar frames
        assert progress_bar(3, "x").disable
        monkeypatch.setenv("FS_PROGRESS", "1")                          # a notebook asks for them anyway
        assert not progress_bar(3, "x").disable
        monkeypatch.setattr("sys.stderr", Terminal())
        monkeypatch.setenv("FS_PROGRESS", "0")
        assert progress_bar(3, "x").disable
    finally:
        logger.setLevel(was)


def write_config(path, fmt, tables: dict) -> str:
    if fmt == "toml":
        text = "".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
                       for name, table in tables.items())
    else:
        import yaml
        text = yaml.safe_dump(tables)
    path = path.with_suffix(f".{fmt}")
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("fmt", ["toml", "yaml"])
def test_config_sets_option_defaults_and_the_command_line_wins(store, tmp_path, fmt):
    other = fabricate_store(tmp_path / "other.zarr", n_videos=4, seed=5)
    config = write_config(tmp_path / "c", fmt, {"info": {"json": True, "store": str(store.path)}})
    res = CliRunner().invoke(main, ["--config", config, "info"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["path"] == str(store.path)          # --json and the store, both from the file
    res = CliRunner().invoke(main, ["--config", config, "info", str(other.path)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["path"] == str(other.path)          # the command line overrides the file
    res = CliRunner().invoke(main, ["info", "--config", config])      # the same file on the verb
    assert res.exit_code == 0 and json.loads(res.output)["path"] == str(store.path), res.output


@pytest.mark.parametrize("fmt", ["toml", "yaml"])
@pytest.mark.parametrize("tables, said", [
    ({"bench": {"subsampel": 2}}, "unknown option 'subsampel' (did you mean 'subsample'?)"),
    ({"bnech": {"subsample": 2}}, "unknown command [bnech] (did you mean 'bench'?)"),
    ({"info": {"json": True}, "bench": {"no_sweeep": True}}, "[bench]: unknown option 'no_sweeep'"),
])
def test_config_refuses_unknown_commands_and_keys(store, tmp_path, fmt, tables, said):
    config = write_config(tmp_path / "c", fmt, tables)
    for args in (["--config", config, "info", str(store.path)], ["info", str(store.path), "--config", config]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and said in res.output, res.output
        assert "Traceback" not in res.output


def test_config_key_spellings_and_a_bad_file(tmp_path):
    config = write_config(tmp_path / "c", "toml", {"bench": {"no-sweep": True, "no_sweep": True, "subsample": 2,
                                                              "milestones": 1}})
    res = CliRunner().invoke(main, ["--config", config, "bench", "--help"])
    assert "unknown option 'milestones'" in res.output                # a trainer's option is not bench's
    (tmp_path / "bad.toml").write_text("[bench\n")
    res = CliRunner().invoke(main, ["--config", str(tmp_path / "bad.toml"), "info"])
    assert res.exit_code == 2 and "not valid TOML" in res.output
    (tmp_path / "c.ini").write_text("[bench]\n")
    res = CliRunner().invoke(main, ["--config", str(tmp_path / "c.ini"), "info"])
    assert res.exit_code == 2 and "a config file ends in .toml, .yaml, .yml" in res.output


def test_train_options_from_a_config_are_an_explicit_schedule(store, tmp_path):
    config = write_config(tmp_path / "c", "yaml", {"train-head": {"epochs": 1, "batch-size": 64,
                                                                  "milestones": [1]}})
    res = CliRunner().invoke(main, ["--config", config, "train-head", "--store", str(store.path), "--runs",
                                    str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "batch 64, 1 epochs, milestones 1" in res.output         # run as given, not sized to the split


def test_bench_options_file_repeats_the_run(store, runs, tmp_path):
    config = write_config(tmp_path / "c", "toml", {"bench": {"subsample": 2, "steps": 4}})
    first = bench(store, runs, tmp_path / "first", "--steps", "5", before=["--config", config])
    assert first.exit_code == 0, first.output
    options = tmp_path / "first" / OPTIONS_FILE
    assert f"{options} (fs --config {options} bench repeats the run)" in first.output
    recorded = read_config(options)["bench"]
    assert recorded["subsample"] == 2 and recorded["steps"] == 5      # the file's default, the command line's value
    assert recorded["store"] == str(store.path) and recorded["no-sweep"] is True
    assert recorded["methods"] == "uniform,skim" and recorded["out"] == str(tmp_path / "first")
    # the repeat writes into the same folder: the same options and the same table
    table = pd.read_csv(tmp_path / "first" / "bench.csv")
    text = options.read_text()
    again = CliRunner().invoke(main, ["--config", str(options), "bench"])
    assert again.exit_code == 0, again.output
    assert options.read_text() == text
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "first" / "bench.csv").drop(columns="seconds_per_video"),
                                  table.drop(columns="seconds_per_video"))

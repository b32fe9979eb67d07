"""The command line: exit codes, messages, status and export, help texts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import API_KEY, Launch, read_table, write_job

from batchrunner.cli import cli
from batchrunner.simulator import FaultRule, ThreadHandle

ROWS = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(10)]
REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.sim(faults=(FaultRule("item number 3", ("always:InvalidParameter",)),))


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, [*args], catch_exceptions=False)


def test_run_exit_1_with_failed_rows_then_status_and_export(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, ROWS)
    result = invoke("run", str(spec), "--quiet")
    assert result.exit_code == 1
    assert f"output table: {tmp_path / 'out' / 'result.csv'} (failed 1, ok 9)" in result.output
    assert f"database:     {tmp_path / 'out' / 't.sqlite'}" in result.output
    status = invoke("status", str(spec))
    assert status.exit_code == 0
    assert "results: failed 1, ok 9" in status.output
    assert "failed with InvalidParameter: 1" in status.output
    assert "last run #1: finished, exit 1" in status.output
    exported = invoke("export", str(spec), "--output", str(tmp_path / "again.parquet"))
    assert exported.exit_code == 0, exported.output
    assert read_table(tmp_path / "again.parquet")["status"].to_list().count("ok") == 9
    assert sim.sim.stats()["requests"] == 10  # status and export send nothing


def test_run_writes_where_told(tmp_path: Path, sim: ThreadHandle) -> None:
    spec = write_job(tmp_path, ROWS[:3])
    result = invoke(
        "run",
        str(spec),
        "-q",
        "--db",
        str(tmp_path / "s.sqlite"),
        "--output",
        str(tmp_path / "o.jsonl"),
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.sqlite").is_file() and read_table(tmp_path / "o.jsonl").height == 3


def test_bad_spec_exit_2_names_file_and_key(tmp_path: Path) -> None:
    spec = write_job(tmp_path, ROWS, {"limits": {"concurrency": 0}})
    result = CliRunner().invoke(cli, ["run", str(spec)])
    assert result.exit_code == 2
    assert f"{spec}: 1 problem(s)" in result.output and "[limits] concurrency" in result.output


def test_bad_input_exit_2(tmp_path: Path) -> None:
    spec = write_job(tmp_path, ROWS, {"prompt": {"template": "{missing}"}})
    result = CliRunner().invoke(cli, ["run", str(spec), "--simulate"])
    assert result.exit_code == 2 and "{missing}" in result.output


def test_unwritable_output_exit_2_before_sending(tmp_path: Path, sim: ThreadHandle) -> None:
    (tmp_path / "out").write_text("a file where a folder should be")
    result = CliRunner().invoke(cli, ["run", str(write_job(tmp_path, ROWS))])
    assert result.exit_code == 2 and "cannot write the output table" in result.output
    assert sim.sim.stats()["requests"] == 0


@pytest.mark.sim(valid_keys=frozenset({"sk-other"}))
def test_auth_failure_exit_3(tmp_path: Path, sim: ThreadHandle) -> None:
    result = CliRunner().invoke(cli, ["run", str(write_job(tmp_path, ROWS)), "-q"])
    assert result.exit_code == 3
    assert "InvalidApiKey" in result.output and API_KEY not in result.output


def test_status_without_a_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["status", str(write_job(tmp_path, ROWS))])
    assert result.exit_code == 2 and "no store here yet" in result.output


def test_every_command_has_help_with_an_example() -> None:
    for name, command in cli.commands.items():
        result = invoke(name, "--help")
        assert result.exit_code == 0
        assert command.help and "Example:" in command.help, name


def test_quickstart_runs_from_the_command_line(tmp_path: Path, launch: Launch) -> None:
    """The README's quickstart: the installed entry point, the simulator, no key."""
    out = tmp_path / "quickstart.csv"
    proc = launch(
        "run",
        str(REPO / "examples" / "quickstart.toml"),
        "--simulate",
        "--output",
        str(out),
        "--db",
        str(tmp_path / "q.sqlite"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"output table: {out} (ok 12)" in stdout
    # not a terminal: plain progress lines instead of a bar
    assert "quickstart: 12/12 rows done; this run ok 12, failed 0" in stderr
    assert "\r" not in stderr
    table = read_table(out)
    assert table.height == 12 and table["status"].to_list() == ["ok"] * 12

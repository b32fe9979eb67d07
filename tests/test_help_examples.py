"""Every example in `batchrunner --help` and each command's `--help` works as written.

The examples run in order (the first `run` makes the store that `status`, `runs`, `retry`,
`export`, `estimate` and `report` read) in a copy of the repository's jobs/ and examples/
folders, against the simulator: DASHSCOPE_BASE_URL points at it, as a user would set it.
`batchrunner simulate` is started as a process of its own on a free port.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from batchrunner.cli import cli
from batchrunner.simulator import ThreadHandle
from batchrunner.store import Store

REPO = Path(__file__).resolve().parent.parent


def examples(command: click.Command) -> list[str]:
    """The command lines under "Example:" in a command's help."""
    text = command.help or ""
    block = text.split("Example:", 1)[1] if "Example:" in text else ""
    return [line.strip() for line in block.strip().splitlines() if line.strip()]


def all_examples() -> list[tuple[str, str]]:
    assert isinstance(cli, click.Group)
    found = [("batchrunner", line) for line in examples(cli)]
    for name, command in cli.commands.items():
        found += [(name, line) for line in examples(command)]
    return found


def test_every_command_has_an_example() -> None:
    assert isinstance(cli, click.Group)
    assert [name for name, command in cli.commands.items() if not examples(command)] == []


def split(line: str) -> tuple[dict[str, str], list[str]]:
    """(VAR=value prefixes, arguments after `batchrunner`) of an example line."""
    words = shlex.split(line)
    env = {}
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[0] == "batchrunner", line
    return env, words[1:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    for folder in ("jobs", "examples"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("out"))
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; each is ended (and reaped) when the test ends, pass or fail."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.terminate()
        try:
            proc.communicate(timeout=10)  # reaps it and closes its pipe
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def start_simulator(args: list[str], served: list[subprocess.Popen[str]]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrunner", "simulate", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")},
    )
    served.append(proc)
    assert proc.stdout is not None
    ready = proc.stdout.readline()  # printed once it listens; EOF if it died
    assert "DashScope simulator at http://127.0.0.1:" in ready, ready


def test_help_examples_run_against_the_simulator(
    workdir: Path, sim_thread: ThreadHandle, served: list[subprocess.Popen[str]]
) -> None:
    runner = CliRunner()
    ran = []
    port = str(free_port())
    for command, line in all_examples():
        line = line.replace(":8000", f":{port}").replace("--port 8000", f"--port {port}")
        env, args = split(line)
        if args[0] == "simulate":
            start_simulator(args[1:], served)
            ran.append(line)
            continue
        env.setdefault("DASHSCOPE_BASE_URL", sim_thread.base_url)
        env.setdefault("DASHSCOPE_API_KEY", "sk-example")
        result = runner.invoke(cli, args, env=env, catch_exceptions=False)
        assert result.exit_code == 0, f"{command}: {line}\n{result.output}"
        ran.append(line)
    assert len(ran) == len(all_examples())
    assert (workdir / "reviews.csv").is_file()  # the export example's output
    with Store(workdir / "examples" / "out" / "quickstart.sqlite", readonly=True) as store:
        last = store.runs()[-1]  # the simulate example's run, pointed at the simulator process
    assert (last["base_url"], last["status"], last["exit_code"]) == (f"http://127.0.0.1:{port}/api/v1", "finished", 0)

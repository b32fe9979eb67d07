"""The README stays true: its set-up commands, CI, and a spec reference covering every key."""

from __future__ import annotations

import re
from pathlib import Path

from batchrunner.spec import _SECTIONS

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def setup_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert block and README.index(block.group(0)) < README.index("\n## ")
    return block.group(1).strip().splitlines()


def test_readme_opens_with_quickstart_and_test_commands() -> None:
    quickstart, tests = setup_commands()
    assert "examples/quickstart.toml --simulate" in quickstart
    assert "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert setup_commands()[1] in ci.splitlines()


def test_spec_reference_lists_every_key() -> None:
    missing = [
        f"[{section}] {key}"
        for section, model in _SECTIONS.items()
        for key in model.model_fields
        if f"`[{section}] {key}" not in README and f"/ `{key}`" not in README and f"`[{section}.{key}]`" not in README
    ]
    assert missing == []


def test_readme_exit_code_table_matches_the_code() -> None:
    from batchrunner.errors import ExitCode

    table = README.split("Exit codes of `run`:", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.M)}
    assert documented == {int(code) for code in ExitCode}


def test_license_file_matches_pyproject() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert project["license"] == {"text": "MIT"}
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the batchrunner authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text

"""Assertions that several test modules share."""

import pytest

from nowcast.cli import run_reporting_errors


def fails_with_one_line(task, capsys) -> str:
    """Run `task` as the console scripts do; check it ends in one error line, and return it."""
    with pytest.raises(SystemExit) as exit_info:
        run_reporting_errors(task)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nowcast: error: "), lines
    return lines[0]

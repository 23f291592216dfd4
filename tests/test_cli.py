"""One CLI convention (no I/O): every command is `streamflow <command>` in its help, takes
--no-progress, and an expected error is one line with its exit code."""

from __future__ import annotations

import pytest

from streamflow import cli, logs


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_names_itself_streamflow_command_in_its_help(command, capsys):
    try:
        code = cli.main([command, "--help"])
    except SystemExit as done:  # argparse's --help exits, unless the command turns it into a code
        code = done.code
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: streamflow {command}"), out[:200]


def test_the_overview_lists_every_command_and_the_common_options(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert f"  {command} " in out
    assert "--no-progress" in out


def test_no_progress_is_taken_by_every_command_and_turns_bars_off(monkeypatch, capsys):
    monkeypatch.delenv("STREAMFLOW_NO_PROGRESS", raising=False)  # the test command sets it
    monkeypatch.setattr(logs, "_PROGRESS_OFF", False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert logs.progress_enabled()
    # `config` has no progress bar of its own: the flag is still accepted
    assert cli.main(["config", "--no-progress"]) == 0
    assert not logs.progress_enabled()
    capsys.readouterr()


def test_unknown_command_is_one_line_and_exit_2(capsys):
    assert cli.main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamflow: unknown command 'no-such-command'")

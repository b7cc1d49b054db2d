"""Subcommands from other packages: the CLI finds ``eval`` and ``train-llm`` through the
``bundle_assistant.commands`` entry point (eval/cli.py), never by importing eval, and
still works when that package is missing."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import pytest

from assistant.cli import COMMAND_GROUP, EXIT_BAD_INPUT, build_parser, main

OURS = ["index", "profile", "search", "recommend", "ideas"]
TAIL = ["feedback", "forget"]


def _commands(parser) -> list[str]:
    sub = next(a for a in parser._actions if a.dest == "command")
    return list(sub.choices)


def test_the_eval_plugin_is_registered_as_an_entry_point():
    names = {ep.name: ep.value for ep in entry_points(group=COMMAND_GROUP)}
    assert names.get("eval") == "eval.cli:register", "run `pip install -e .` so the entry point registers"


def test_help_lists_every_command_in_its_usual_place():
    assert _commands(build_parser()) == [*OURS, "eval", "train-llm", *TAIL]
    assert "offline evaluation protocols" in build_parser().format_help()


def test_a_plugin_command_reaches_its_handler(tmp_path, capsys):
    # eval's own check, raised as the CLI's error: one line and exit 2
    assert main(["eval", "--protocol", "shopper-scenarios", "--out", str(tmp_path)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("bundle-assistant eval: error:") and "--scenarios" in err
    assert main(["eval", "--protocol", "cj-completion", "--variants", "best", "--out", str(tmp_path)]) == 2
    assert "--variants must be some of" in capsys.readouterr().err


def test_without_the_eval_package_the_other_commands_still_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "eval.cli", None)  # Python's own way of blocking an import
    assert _commands(build_parser()) == [*OURS, *TAIL]
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--protocol", "cj-completion"])
    assert exc.value.code == 2 and "invalid choice: 'eval'" in capsys.readouterr().err
    assert main(["forget", "  ", "--data-dir", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "USER_ID is empty" in capsys.readouterr().err

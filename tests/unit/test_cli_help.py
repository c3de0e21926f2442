"""Every ``clipper`` flag says what it does and its default (``clipper COMMAND --help``)."""

import argparse

import pytest

from clipper_core.cli import build_parser, main


def _commands():
    ap = build_parser()
    subs = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return [("clipper", ap)] + [(f"clipper {n}", p) for n, p in subs.choices.items()]


@pytest.mark.parametrize("prog,parser", _commands(), ids=[p for p, _ in _commands()])
def test_every_flag_has_help_with_its_default(prog, parser):
    missing = []
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        text = (a.help or "").lower()
        name = "/".join(a.option_strings) or a.dest
        if not text or text == argparse.SUPPRESS:
            missing.append(f"{name}: no help")
        elif a.option_strings and "default" not in text and "required" not in text:
            missing.append(f"{name}: help does not give the default ({a.help!r})")
    assert not missing, f"{prog}: " + "; ".join(missing)


def test_start_help_names_the_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["start", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag, default in [("--query-port", "1337"), ("--mgmt-port", "1338"),
                          ("--rpc-port", "7000"), ("--mgmt-host", "127.0.0.1"),
                          ("--rpc-host", "127.0.0.1"), ("--log-level", "INFO"),
                          ("--state-dir", "~/.clipper")]:
        assert flag in out
        assert f"(default {default})" in out or f"else {default})" in out, flag

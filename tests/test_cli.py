import os

from recsearch import cli


def test_usage_lists_commands_and_unknown_command_fails(capsys):
    assert cli.main([]) == 2
    assert "data synth" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main(["data", "nope"]) == 2
    assert "expected one of: synth, preprocess, stats" in capsys.readouterr().err


def test_openmp_threads_wait_passively_unless_the_user_chose(monkeypatch):

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cli.main(["data", "nothing"]) == 2  # any dispatch sets it before a command imports torch
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cli.main(["data", "nothing"]) == 2
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"

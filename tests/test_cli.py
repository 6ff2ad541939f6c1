from recsearch import cli


def test_usage_lists_commands_and_unknown_command_fails(capsys):
    assert cli.main([]) == 2
    assert "data synth" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main(["data", "nope"]) == 2
    assert "expected one of: synth, preprocess, stats" in capsys.readouterr().err

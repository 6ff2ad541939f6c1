import os

from recsearch import cli


def test_usage_lists_commands_and_unknown_command_fails(capsys):
    assert cli.main([]) == 2
    assert "data synth" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main(["data", "nope"]) == 2
    assert "expected one of: synth, preprocess, stats" in capsys.readouterr().err


def test_a_command_group_help_lists_its_subcommands_and_succeeds(capsys):
    for group, flag in (("place", "--help"), ("data", "-h"), ("optuna", "--help")):
        assert cli.main([group, flag]) == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: recsearch {group} <subcommand> [args]")
        subs = {w[1]: h for w, (_, h) in cli.commands().items() if w[0] == group and len(w) > 1}
        assert subs
        for name, help_text in subs.items():
            line = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
            assert line.split(None, 1) == [name, help_text]
    # without a subcommand, or with an unknown one: the same listing on stderr, exit 2
    assert cli.main(["place"]) == 2
    err = capsys.readouterr().err
    assert "recsearch place: expected one of: tables, measure" in err and "subcommands:" in err
    assert cli.main(["data", "nope"]) == 2
    assert "recsearch data: unknown subcommand 'nope'; expected one of" in capsys.readouterr().err
    # a subcommand's --help still reaches the subcommand (argparse exits 0)
    try:
        cli.main(["place", "tables", "--help"])
    except SystemExit as stop:
        assert stop.code == 0
    assert "usage:" in capsys.readouterr().out


def test_openmp_threads_wait_passively_unless_the_user_chose(monkeypatch):

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cli.main(["data", "nothing"]) == 2  # any dispatch sets it before a command imports torch
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cli.main(["data", "nothing"]) == 2
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_version_and_help_print_and_succeed(capsys):
    from importlib.metadata import version

    import recsearch

    assert cli.main(["--version"]) == 0
    printed = capsys.readouterr().out.strip()
    # the version the package reports is the one it was installed as (pyproject.toml reads it from
    # recsearch.__version__)
    assert printed == recsearch.__version__ == version("recsearch")
    for flag in ("--help", "-h"):
        assert cli.main([flag]) == 0
        text = capsys.readouterr().out
        assert text.startswith("usage: recsearch <command> [args]")
        # every command is listed with its help line
        for words, (_, help_text) in cli.commands().items():
            assert f"  {' '.join(words):<18} {help_text}" in text


def test_the_console_script_runs_the_cli(tmp_path):
    """`recsearch`, the entry point pyproject.toml installs beside the interpreter, runs cli.main."""
    import subprocess
    import sys
    from pathlib import Path

    import recsearch

    script = Path(sys.executable).parent / "recsearch"
    assert script.exists(), "the recsearch console script is not installed in this environment"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == recsearch.__version__, proc.stderr
    proc = subprocess.run([str(script), "frobnicate"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 2 and "unknown command 'frobnicate'" in proc.stderr


def test_a_rank_of_a_multi_process_run_exits_hard_with_its_code_and_flushed_output(tmp_path):
    """exit_process: with WORLD_SIZE > 1 (a torchrun rank) the process leaves through os._exit,
    skipping interpreter teardown, after flushing what it printed and logged; the exit code is
    kept either way. An atexit hook shows which way it left."""
    import subprocess
    import sys

    code = ("import atexit, logging; from recsearch.cli import exit_process; "
            "atexit.register(lambda: print('teardown ran', flush=True)); "
            "logging.basicConfig(level=logging.INFO, filename='log.txt'); logging.info('logged'); "
            "print('printed', end=''); exit_process(3)")
    for world, teardown in (("2", False), ("1", True)):
        env = {**os.environ, "WORLD_SIZE": world}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path, env=env, check=False)
        assert proc.returncode == 3, proc.stderr
        assert proc.stdout.startswith("printed") and ("teardown ran" in proc.stdout) == teardown
        assert "logged" in (tmp_path / "log.txt").read_text()

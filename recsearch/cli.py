"""`recsearch <command> [<subcommand>] ...`: dispatch to each command module's main(argv).

Command modules are imported only when their command runs, so `recsearch data synth` does not
pay for importing TorchRec.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from recsearch import logs

# OpenMP threads that spin while they wait for work are ruinous on a busy CPU: measured on a
# loaded 2-core machine, FBGEMM's CPU embedding backward (dim 128, batch 2048, 26 tables) took
# ~1,000 ms with spinning waits and ~43 ms with passive ones, and whole training steps ran 1.2-7x
# faster (tools/bench_train.py --omp-wait-policy, docs/BENCHMARKS.md). Training always has other
# threads beside the OpenMP team (the batch prefetcher, concurrent trials), so passive waiting is
# the default; it must be set before torch starts its OpenMP runtime, hence here. An explicit
# setting in the environment wins.
OMP_WAIT_POLICY_DEFAULT = "PASSIVE"


# `recsearch train|search --print-config ...`: print the config those arguments give (recsearch
# config show) instead of running the command.
PRINT_CONFIG_COMMANDS = ("train", "search")


def commands() -> dict[tuple[str, ...], tuple[str, str]]:
    """(command words) -> (module exposing main(argv) -> int, one-line help)."""
    return {
        ("data", "synth"): ("recsearch.data.synthetic", "generate Criteo-like data with a known ceiling"),
        ("data", "preprocess"): ("recsearch.data.criteo", "Criteo TSV -> TorchRec npy layout"),
        ("data", "stats"): ("recsearch.data.stats", "per-table statistics for placement"),
        ("train",): ("recsearch.train.trainer", "train a DLRM from a config"),
        ("baseline", "logreg"): ("recsearch.train.logreg", "logistic-regression baseline on the same splits"),
        ("place", "tables"): ("recsearch.placement.cli.tables", "generate table pools and placement tasks"),
        ("place", "measure"): ("recsearch.placement.cli.measure", "measure real table-lookup costs"),
        ("place", "baseline"): ("recsearch.placement.cli.baseline", "place a task with baseline placers"),
        ("place", "cost-net"): ("recsearch.placement.cli.cost_net", "train / evaluate the placement cost network"),
        ("place", "policy"): ("recsearch.placement.cli.policy", "train the actor-critic placer / place a task with it"),
        ("place", "eval"): ("recsearch.placement.cli.eval", "compare placers on tasks by measured cost"),
        ("search",): ("recsearch.search.loop", "search architectures and hyperparameters"),
        ("report",): ("recsearch.search.report", "report on a search directory"),
        ("optuna", "export"): ("recsearch.search.optuna_cli", "a search as an Optuna study (journal file)"),
        ("config", "show"): ("recsearch.config_show", "print a resolved train/search/synth config as YAML"),
    }


def usage() -> str:
    lines = ["usage: recsearch <command> [args]", "", "commands:"]
    for words, (_, help_text) in commands().items():
        lines.append(f"  {' '.join(words):<18} {help_text}")
    lines.append("")
    lines.append("`recsearch --log-level debug|info|warning|error <command> ...` sets how much progress it prints "
                 "(default info; also RECSEARCH_LOG_LEVEL)")
    lines.append("run `recsearch <command> --help` for a command's options; `recsearch train|search "
                 "--print-config ...` prints the resolved config instead of running")
    return "\n".join(lines)


def group_usage(word: str) -> str | None:
    """The help of a command group (`recsearch place`, `recsearch data`, ...): its subcommands
    with their one-line help; None when word is no group."""
    subs = {w[1]: help_text for w, (_, help_text) in commands().items() if w[0] == word and len(w) > 1}
    if not subs:
        return None
    width = max(len(name) for name in subs) + 2
    lines = [f"usage: recsearch {word} <subcommand> [args]", "", "subcommands:"]
    lines += [f"  {name:<{width}} {help_text}" for name, help_text in subs.items()]
    lines += ["", f"run `recsearch {word} <subcommand> --help` for a subcommand's options"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from recsearch import __version__

        print(__version__)
        return 0
    if argv[0] == "--log-level" or argv[0].startswith("--log-level="):
        level, argv = (argv[1] if len(argv) > 1 else "", argv[2:]) if argv[0] == "--log-level" else (argv[0].split("=", 1)[1], argv[1:])
        if level.lower() not in logs.LEVELS:
            print(f"recsearch: --log-level {level!r}: expected one of {', '.join(logs.LEVELS)}", file=sys.stderr)
            return 2
        # through the environment: the trials a search starts (processes of their own) log alike
        os.environ[logs.LEVEL_ENV] = level.lower()
        if not argv:
            print(usage())
            return 2
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY_DEFAULT)
    if argv[0] in PRINT_CONFIG_COMMANDS and "--print-config" in argv[1:]:
        show = importlib.import_module(commands()[("config", "show")][0])
        return int(show.print_config_main(argv[0], argv[1:]))
    table = commands()
    for n_words in (2, 1):
        words = tuple(argv[:n_words])
        if words in table:
            module_name = table[words][0]
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as err:
                if err.name and err.name.startswith("recsearch"):
                    print(f"recsearch: `{' '.join(words)}` is not available in this build", file=sys.stderr)
                    return 2
                raise
            return int(module.main(argv[n_words:]) or 0)
    group = group_usage(argv[0])
    if group is not None and argv[1:2] in (["-h"], ["--help"]):
        print(group)
        return 0
    if group is not None:
        subs = ", ".join(w[1] for w in table if w[0] == argv[0] and len(w) > 1)
        given = f"unknown subcommand {argv[1]!r}; " if len(argv) > 1 else ""
        print(f"recsearch {argv[0]}: {given}expected one of: {subs}\n\n{group}", file=sys.stderr)
    else:
        print(f"recsearch: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
    return 2


def exit_process(code: int) -> None:
    """Leave the process with code. A rank of a multi-process run (torchrun sets WORLD_SIZE > 1)
    leaves through os._exit once its output is flushed: its work is done and written by then (the
    trainer closes its writers and destroys its process group before returning), but the
    interpreter's teardown afterwards can abort the rank ("terminate called without an active
    exception", SIGABRT, about once in 30 two-rank runs on the CPU), which torchrun reports as a
    failed job. A single process exits normally."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        hard_exit(code)
    sys.exit(code)


def hard_exit(code: int) -> None:
    """Flush logging, stdout and stderr, then os._exit(code): no interpreter teardown (see
    exit_process; the test suite's spawned ranks leave the same way, tests/spawn.py)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run() -> None:
    """The `recsearch` console script: main() on the command line, then exit_process."""
    exit_process(main())


if __name__ == "__main__":
    run()

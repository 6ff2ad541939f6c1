"""`recsearch optuna export DIR --out study.log`: a search as an Optuna study (journal storage),
for optuna-dashboard (`optuna-dashboard study.log`) and optuna.visualization
(recsearch.search.optuna_io)."""

from __future__ import annotations

import argparse
import sys

from recsearch.cliargs import list_flag
from recsearch.search import optuna_io


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recsearch optuna export",
        description="Write a search's trials as an Optuna study in a journal file.",
    )
    parser.add_argument("search_dir", help="the search directory (holds journal.jsonl)")
    parser.add_argument("--out", required=True, help="the Optuna journal file to write")
    parser.add_argument(
        "--objectives", **list_flag(str, words=False), default=list(optuna_io.DEFAULT_OBJECTIVES),
        help=f"comma-separated, each one of {', '.join(optuna_io.OBJECTIVES)} "
             f"(default: {','.join(optuna_io.DEFAULT_OBJECTIVES)})",
    )
    parser.add_argument("--study-name", help="default: the search directory's name")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    try:
        summary = optuna_io.export_study(
            args.search_dir, args.out, objectives=args.objectives,
            study_name=args.study_name, force=args.force,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"recsearch optuna export: {err}", file=sys.stderr)
        return 2
    states = ", ".join(f"{n} {k.lower()}" for k, n in sorted(summary.states.items()))
    print(f"{summary.path}: study {summary.study_name!r} ({', '.join(summary.objectives)}): {states}"
          + (f"; {summary.left_out} unfinished left out" if summary.left_out else ""))
    print(f"view it with: optuna-dashboard {summary.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

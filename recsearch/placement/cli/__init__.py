"""The `recsearch place ...` commands, one module per command, each exposing `main(argv) -> int`
(recsearch/cli.py dispatches to them). Argument parsing and printing live here only: the library
modules of recsearch.placement take typed arguments and return values.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from recsearch.placement.types import PlacementError

# what a command reports as `prog: message` with exit status 2 (a bad input, an impossible task)
EXPECTED_ERRORS: tuple[type[Exception], ...] = (FileNotFoundError, ValueError, PlacementError)


def run_reporting(
    prog: str, run: Callable[[], int], errors: tuple[type[Exception], ...] = EXPECTED_ERRORS
) -> int:
    """run()'s exit status; one of errors is printed as `prog: error` on standard error, status 2."""
    try:
        return run()
    except errors as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2

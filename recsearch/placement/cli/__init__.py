"""The `recsearch place ...` commands, one module per command, each exposing `main(argv) -> int`
(recsearch/cli.py dispatches to them). Argument parsing and printing live here only: the library
modules of recsearch.placement take typed arguments and return values.
"""

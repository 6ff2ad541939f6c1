"""docs/BENCHMARKS.md is shared by every benchmark (tools/bench_*.py, `recsearch place eval`): each owns one section between
`<!-- NAME:start -->` and `<!-- NAME:end -->` and rewrites only that, so tools run in any order."""

from __future__ import annotations

from pathlib import Path

MD_HEADER = "# Benchmarks\n\nEvery number here was measured by a tool in tools/, with the command given.\n"


def markers(name: str) -> tuple[str, str]:
    """The start and end marker lines of section `name`."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(md_path: Path, name: str, body: str) -> None:
    """Put `body` between section `name`'s markers (appending the section if it is new) and keep
    the rest of the file as it is. `body` is the text without the markers."""
    start, end = markers(name)
    section = f"{start}\n{body.strip(chr(10))}\n{end}\n"
    text = md_path.read_text() if md_path.exists() else MD_HEADER
    if start in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1] if end in rest else ""
        text = head + section + tail.lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)

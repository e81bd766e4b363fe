"""One section of a Markdown document, written in place: the text between

    <!-- NAME:begin (written by COMMAND) -->
    <!-- NAME:end -->

is replaced and every other byte of the file is left as it was. The benchmark scripts write their
tables into docs/BENCHMARKS.md through write_section, each into its own named section.
"""
from __future__ import annotations

import re
from pathlib import Path

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SectionError(ValueError):
    """The document's markers for a section are not one begin marker followed by one end marker."""


def markers(name: str, command: str) -> tuple[str, str]:
    """The begin and end marker lines of section ``name`` (without newlines)."""
    return f"<!-- {name}:begin (written by {command}) -->", f"<!-- {name}:end -->"


def write_section(path, name: str, body: str, command: str) -> None:
    """Replace the text between section ``name``'s markers in the file at ``path`` with ``body``.

    The begin marker is matched whatever its parenthesis says and is rewritten with ``command``.
    A section that is absent is appended at the end of the file (after a blank line); a file that
    does not exist is created. Raises SectionError if the begin marker has no end marker after it,
    an end marker has no begin marker, or either marker appears more than once. The new file is
    written to a temporary file in the same folder and moved over the old one (os.replace), so a
    reader never sees a half-written document.
    """
    if not NAME.fullmatch(name):
        raise ValueError(f"section name {name!r}: letters, digits, '_', '.', '-' only")
    if "-->" in command or "\n" in command:
        raise ValueError(f"command {command!r} cannot go into a marker")
    path = Path(path)
    begin_line, end_line = markers(name, command)
    block = f"{begin_line}\n{body.rstrip(chr(10))}\n{end_line}"

    text = path.read_bytes().decode("utf-8") if path.exists() else ""
    begins = [m.span() for m in re.finditer(r"<!-- " + re.escape(name) + r":begin(?: \([^\n]*?\))? -->", text)]
    ends = [m.span() for m in re.finditer(re.escape(end_line), text)]
    where = f"{path}: section {name!r}"
    if len(begins) > 1:
        raise SectionError(f"{where}: {len(begins)} begin markers (one expected)")
    if len(ends) > 1:
        raise SectionError(f"{where}: {len(ends)} end markers (one expected)")
    if begins and not ends:
        raise SectionError(f"{where}: begin marker without an end marker `{end_line}`")
    if ends and not begins:
        raise SectionError(f"{where}: end marker without a begin marker")
    if begins:
        start, stop = begins[0][0], ends[0][1]
        if stop < begins[0][1]:
            raise SectionError(f"{where}: the end marker comes before the begin marker")
        new = text[:start] + block + text[stop:]
    else:
        sep = "" if not text else ("\n" if text.endswith("\n") else "\n\n")
        new = text + sep + block + "\n"
    # imported here: the scripts import this module before torch loads (OMP_WAIT_POLICY is set first)
    from soft_d2.utils.files import atomic_write

    data = new.encode("utf-8")
    atomic_write(str(path), lambda f: f.write(data))

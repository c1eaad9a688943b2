"""Files a command reads and writes, checked up front: each problem is one line naming the file (and the line).

    text = read_text(path)              # UTF-8 text; missing, a directory, unreadable or not UTF-8: AlignkitError
    out = output_file(args.out)         # where a file will go: not an existing directory
    out = output_dir(args.out)          # where files will go: not an existing file
"""

from __future__ import annotations

from pathlib import Path

from alignkit import AlignkitError


def decode(data: bytes, path, first_line: int = 1) -> str:
    """`data` as UTF-8 (a leading BOM dropped); bytes that are not UTF-8 are an error naming the file and line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = first_line + data[: e.start].count(b"\n")
        raise AlignkitError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                            "save the file as UTF-8") from None


def read_bytes(path) -> bytes:
    p = Path(path)
    if not p.exists():
        raise AlignkitError(f"{path}: file not found")
    if p.is_dir():
        raise AlignkitError(f"{path}: is a directory, expected a file")
    try:
        return p.read_bytes()
    except OSError as e:
        raise AlignkitError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None


def read_text(path) -> str:
    return decode(read_bytes(path), path)


def output_file(path) -> Path:
    """A path a command will write one file to: refused when it is an existing directory (or under a file)."""
    p = Path(path)
    if p.is_dir():
        raise AlignkitError(f"{path}: is a directory; give a file name to write")
    _parent_is_a_directory(p)
    return p


def output_dir(path) -> Path:
    """A path a command will write its files into: refused when it is an existing file (or under one)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise AlignkitError(f"{path}: is a file; give a directory to write into")
    _parent_is_a_directory(p)
    return p


def _parent_is_a_directory(p: Path) -> None:
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise AlignkitError(f"{p}: {parent} is a file, not a directory")
            return

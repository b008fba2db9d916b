"""Writing files so a reader never sees half of one; reading parsed files once per process; the page templates a package ships."""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["parsed_once", "templates", "write_atomic"]

_PARSED: dict[tuple[object, ...], object] = {}


def parsed_once(kind: str, directory: Path, pattern: str, parse: Callable[[], T]) -> T:
    """``parse()`` of the files ``pattern`` names in ``directory``, parsed again only when one of
    them changed (path, size and modification time), and handed out as a deep copy so that no
    caller can change another's.

    Why: a store site opens its records, data maps and rules on every message of a run (a
    store's round), and parsing the YAML took a fifth of a small store's round in a profile.
    """
    base = Path(directory)
    try:
        stats = tuple((p.name, st.st_size, st.st_mtime_ns) for p in sorted(base.glob(pattern)) for st in [p.stat()])
    except OSError:
        return parse()
    key = (kind, str(base.resolve()), pattern, stats)
    if key not in _PARSED:
        if len(_PARSED) > 64:
            _PARSED.clear()
        _PARSED[key] = parse()
    return copy.deepcopy(_PARSED[key])  # type: ignore[return-value]


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary file beside ``path``, set ``mode``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def templates(package: str, folder: str = "templates") -> Any:
    """The Jinja environment for a package's HTML templates: every value escaped, an undefined
    name an error (never an empty cell), block tags leaving no blank lines."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader(package, folder), autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)

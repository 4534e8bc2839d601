"""The golden file: the expected auditor state of every (test, seed), the determinism gate for CI.

Format (YAML, keys sorted, written atomically)::

    format: commonware-golden
    version: 1
    auditor:
      tests/test_mod.py::test_protocol[seed=0]: 9f86d081884c7d65...

A key is the pytest node id, which already names the seed (``[seed=N]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..atomicfile import atomic_write

__all__ = ["GoldenError", "load_golden", "merge_golden", "write_golden"]

FORMAT = "commonware-golden"
VERSION = 1


class GoldenError(ValueError):
    """A golden file that cannot be used; the message names the file and the problem."""


def load_golden(path: Path) -> dict[str, str]:
    """The node id -> auditor state mapping of ``path`` (safe YAML only)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GoldenError(f"{path}: cannot read the golden file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise GoldenError(f"{path}: the golden file is not UTF-8 text") from None
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise GoldenError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise GoldenError(f"{path}: not a golden file (expected 'format: {FORMAT}')")
    version = data.get("version")
    if version != VERSION:
        raise GoldenError(f"{path}: golden file version {version!r} is not supported (this plugin reads version {VERSION})")
    table = data.get("auditor")
    if table is None:
        return {}
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        raise GoldenError(f"{path}: 'auditor' must map test node ids to auditor states (strings)")
    return dict(table)


def merge_golden(existing: Mapping[str, str], fresh: Mapping[str, str]) -> dict[str, str]:
    """Entries of tests that ran this session replace the old ones; the rest are kept."""
    merged = dict(existing)
    merged.update(fresh)
    return {key: merged[key] for key in sorted(merged)}


def write_golden(path: Path, table: Mapping[str, str]) -> Path:
    """Write ``table`` to ``path`` atomically and durably, mode 0644 (temp file in the same
    directory, fsync, rename, directory fsync; leftovers of interrupted writes are removed)."""
    document = {"format": FORMAT, "version": VERSION, "auditor": {k: table[k] for k in sorted(table)}}
    text = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=1_000_000)
    atomic_write(path, text.encode("utf-8"))
    return path

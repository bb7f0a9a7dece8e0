"""Files of the tool folders, indexed by a key and re-read only when a file changes.

The tool path (``references.py``) holds cascades usable as tools (by ``cascade_id``) and
declarative tool files (``tools/declarative.py``, by ``tool_id``). DAG folders are parsed every
few seconds, so each folder's entries are kept until a file in it is added, removed or changed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_INDEXED_FILES = 2000
"""A tool folder larger than this is a mistake (e.g. a data folder); indexing stops there."""

_Signature = tuple[tuple[str, float, int], ...]


class FolderIndex(Generic[T]):
    """Entries read by ``read`` from the files of a folder (recursively) whose names end with one
    of ``suffixes``, by ``key``; the first file of a key wins (files in sorted order)."""

    def __init__(
        self, suffixes: Sequence[str], read: Callable[[Path], T | None], key: Callable[[T], str]
    ) -> None:
        self._suffixes = tuple(suffix.lower() for suffix in suffixes)
        self._read = read
        self._key = key
        self._lock = threading.Lock()
        self._folders: dict[Path, tuple[_Signature, dict[str, T]]] = {}

    def entries(self, folder: Path) -> dict[str, T]:
        files = self._files(folder)
        signature = tuple((str(path), stat.st_mtime, stat.st_size) for path, stat in files)
        with self._lock:
            cached = self._folders.get(folder)
            if cached is not None and cached[0] == signature:
                return cached[1]
        found: dict[str, T] = {}
        for path, _ in files:
            entry = self._read(path)
            if entry is not None:
                found.setdefault(self._key(entry), entry)
        with self._lock:
            self._folders[folder] = (signature, found)
        return found

    def find(self, name: str, folders: Sequence[Path]) -> T | None:
        """The entry ``name`` of the first folder that has one."""
        for folder in folders:
            entry = self.entries(folder).get(name)
            if entry is not None:
                return entry
        return None

    def names(self, folders: Sequence[Path]) -> set[str]:
        return {name for folder in folders for name in self.entries(folder)}

    def _files(self, folder: Path) -> list[tuple[Path, os.stat_result]]:
        files: list[tuple[Path, os.stat_result]] = []
        for root, dirs, names in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
            for name in sorted(names):
                if name.lower().endswith(self._suffixes):
                    path = Path(root) / name
                    try:
                        files.append((path, path.stat()))
                    except OSError:
                        continue
                    if len(files) >= MAX_INDEXED_FILES:
                        return files
        return files

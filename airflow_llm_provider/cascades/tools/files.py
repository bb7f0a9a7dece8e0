"""Built-in tool family: files — Windlass's ``read_file``, ``write_file``, ``append_file``,
``list_files`` and ``file_info``.

Windlass lets these reach the whole host file system (it only refuses writes under ``/etc``,
``/bin``...). A model's file access on an Airflow worker must not reach the Airflow home, the
DAG folder's secrets or other runs, so here:

- **writes** (``write_file``, ``append_file``) go to the run's ``files`` folder (inside its scratch
  folder, removed when the run ends): ``write_file("out/report.md", ...)`` creates
  ``<run>/files/out/report.md``;
- **reads** (``read_file``, ``list_files``, ``file_info``) look in the run's ``files`` folder
  first, then in the cascade's own folder tree (read-only: the files the author shipped with it);
- absolute paths, ``~``, ``..`` and symlinks leading elsewhere are refused (``trust.py``).

Answers and errors are Windlass's strings (errors start with ``Error:``, nothing is raised), and
the bounds are Windlass's: 100,000 characters read, 200 files and 100 folders listed; plus a
write bound of :data:`MAX_WRITE_CHARS` per call and :data:`MAX_FOLDER_BYTES` per run.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow_llm_provider.cascades.tools.builtin import BuiltinTool, ToolContext

MAX_READ_CHARS = 100_000
MAX_WRITE_CHARS = 1_000_000
MAX_FOLDER_BYTES = 64 * 1024 * 1024
MAX_FILES_LISTED = 200
MAX_FOLDERS_LISTED = 100


def _folder(context: ToolContext) -> Path:
    folder = context.session.folder / "files"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _writable(context: ToolContext, path: str) -> tuple[Path | None, str | None]:
    from airflow_llm_provider.cascades.trust import confined_path

    found, why = confined_path(path, _folder(context))
    if found is None:
        return None, f"Error: {why} (files are written to this run's own folder)"
    return found, None


def _readable(context: ToolContext, path: str) -> tuple[Path | None, str | None]:
    """The run's folder first, then the cascade's folder tree; the first that has ``path``."""
    from airflow_llm_provider.cascades.trust import confined_path

    folders = [_folder(context)] + ([context.base_dir] if context.base_dir is not None else [])
    reason = None
    for folder in folders:
        found, why = confined_path(path or ".", folder)
        if found is None:
            reason = why
            continue
        if found.exists():
            return found, None
    if reason is not None:
        return None, f"Error: {reason}"
    return None, f"Error: Path not found: {path}"


def _used_bytes(folder: Path) -> int:
    return sum(item.stat().st_size for item in folder.rglob("*") if item.is_file())


def _size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def make_read_file(context: ToolContext) -> Any:
    def read_file(path: str, encoding: str = "utf-8") -> str:
        """Read a text file (this run's files, then the cascade's own folder)."""
        found, error = _readable(context, path)
        if found is None:
            return error or "Error"
        if not found.is_file():
            return f"Error: Path is not a file: {path}"
        try:
            if encoding == "binary":
                data = found.read_bytes()[:1000]
                size = found.stat().st_size
                return f"Binary file ({size} bytes). First {len(data)} bytes as hex:\n{data.hex()}"
            with found.open(encoding=encoding) as handle:
                content = handle.read(MAX_READ_CHARS + 1)
        except (UnicodeDecodeError, LookupError) as err:
            return f"Error: Cannot decode file with {encoding} encoding: {err}"
        except OSError as err:
            return f"Error reading file: {err.strerror or err}"
        if len(content) > MAX_READ_CHARS:
            return f"File truncated. First {MAX_READ_CHARS} chars:\n{content[:MAX_READ_CHARS]}"
        return content

    return read_file


def _writer(context: ToolContext, mode: str) -> Any:
    def write(path: str, content: str, encoding: str = "utf-8") -> str:
        target, error = _writable(context, path)
        if target is None:
            return error or "Error"
        text = content if isinstance(content, str) else str(content)
        if len(text) > MAX_WRITE_CHARS:
            return f"Error: content is {len(text):,} characters, over the limit of {MAX_WRITE_CHARS:,}"
        if _used_bytes(_folder(context)) + len(text.encode(encoding, "replace")) > MAX_FOLDER_BYTES:
            return f"Error: this run's files would exceed {_size(MAX_FOLDER_BYTES)}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open(mode, encoding=encoding) as handle:
                handle.write(text)
        except (OSError, LookupError) as err:
            return f"Error writing file: {err}"
        verb = "wrote" if mode == "w" else "appended"
        return f"Successfully {verb} {len(text)} characters to {path}"

    return write


def make_write_file(context: ToolContext) -> Any:
    write = _writer(context, "w")

    def write_file(path: str, content: str, encoding: str = "utf-8") -> str:
        """Write a text file in this run's files folder (created with its parent folders)."""
        return str(write(path, content, encoding))

    return write_file


def make_append_file(context: ToolContext) -> Any:
    append = _writer(context, "a")

    def append_file(path: str, content: str, encoding: str = "utf-8") -> str:
        """Append text to a file in this run's files folder (created if missing)."""
        return str(append(path, content, encoding))

    return append_file


def make_list_files(context: ToolContext) -> Any:
    def list_files(path: str = ".", pattern: str = "*", recursive: bool = False) -> str:
        """List files and folders matching a glob pattern."""
        found, error = _readable(context, path)
        if found is None:
            return error or "Error"
        if not found.is_dir():
            return f"Error: Path is not a directory: {path}"
        if ".." in Path(pattern).parts or pattern.startswith("/"):
            return "Error: the pattern may not leave the folder"
        matches = list(found.rglob(pattern) if recursive else found.glob(pattern))
        folders = sorted(m for m in matches if m.is_dir() and not m.is_symlink())
        files = sorted(m for m in matches if m.is_file() and not m.is_symlink())
        lines = [
            f"Directory: {path}",
            f"Pattern: {pattern}" + (" (recursive)" if recursive else ""),
            f"Found: {len(folders)} directories, {len(files)} files",
            "",
        ]
        if folders:
            lines.append("Directories:")
            lines += [f"  {d.relative_to(found)}/" for d in folders[:MAX_FOLDERS_LISTED]]
            if len(folders) > MAX_FOLDERS_LISTED:
                lines.append(f"  ... and {len(folders) - MAX_FOLDERS_LISTED} more directories")
        if files:
            lines.append("Files:")
            lines += [
                f"  {f.relative_to(found)} ({_size(f.stat().st_size)})" for f in files[:MAX_FILES_LISTED]
            ]
            if len(files) > MAX_FILES_LISTED:
                lines.append(f"  ... and {len(files) - MAX_FILES_LISTED} more files")
        if not folders and not files:
            lines.append("(no matches found)")
        return "\n".join(lines)

    return list_files


def make_file_info(context: ToolContext) -> Any:
    def file_info(path: str) -> str:
        """Size, type and modification time of a file or folder."""
        found, error = _readable(context, path)
        if found is None:
            return error or "Error"
        status = found.stat()
        modified = dt.datetime.fromtimestamp(status.st_mtime, tz=dt.UTC).isoformat(timespec="seconds")
        return "\n".join(
            [
                f"Path: {path}",
                f"Type: {'Directory' if found.is_dir() else 'File'}",
                f"Size: {_size(status.st_size)} ({status.st_size} bytes)",
                f"Modified: {modified}",
            ]
        )

    return file_info


TOOLS = (
    BuiltinTool("read_file", make=make_read_file),
    BuiltinTool("write_file", make=make_write_file),
    BuiltinTool("append_file", make=make_append_file),
    BuiltinTool("list_files", make=make_list_files),
    BuiltinTool("file_info", make=make_file_info),
)

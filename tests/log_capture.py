"""Read what a hook logged, on both Airflow lines and whatever ran before.

Airflow 3 logs hooks through structlog to stdout. Airflow 2 uses a stdlib logger under
``airflow.task``, whose propagation an earlier ``dag.test()`` may have switched off, so caplog
alone can miss it: listen on the hook's own logger as well.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest


class HookLog:
    def __init__(self, capfd: pytest.CaptureFixture[str]) -> None:
        self._capfd = capfd
        self.records: list[logging.LogRecord] = []

    @property
    def text(self) -> str:
        captured = "".join(self._capfd.readouterr())
        return captured + "\n".join(f"{r.levelname} {r.getMessage()}" for r in self.records)


@contextlib.contextmanager
def capture_hook_log(hook: Any, capfd: pytest.CaptureFixture[str]) -> Iterator[HookLog]:
    log = HookLog(capfd)
    listener = logging.Handler(level=logging.DEBUG)
    listener.emit = log.records.append  # type: ignore[method-assign]
    stdlib_logger = hook.log if isinstance(hook.log, logging.Logger) else None
    if stdlib_logger is not None:
        stdlib_logger.addHandler(listener)
    try:
        yield log
    finally:
        if stdlib_logger is not None:
            stdlib_logger.removeHandler(listener)

"""Windlass ``tool_caching``: reuse a deterministic tool's result for the same arguments.

As in Windlass, only the tools named under ``tool_caching.tools`` (with ``enabled``) are cached,
per run, keyed by tool name and the arguments the policy's ``key`` picks:

- ``args_hash``: every argument; ``query``: the ``query`` argument; ``sql_hash``: the ``sql``
  argument; ``custom``: ``custom_key_fn`` (a registered tool name or ``python:module.func``)
  called with the arguments, its return value being the key (without it: ``args_hash``).

Entries expire after the policy's ``ttl`` (``global_ttl`` when the policy sets none) and the least
recently used one is dropped past ``max_cache_size``. Windlass keeps the cache in the runner's
memory whatever ``storage`` says; so do we (a ``redis``/``sqlite`` storage is accepted and said
to be kept in memory). Failed calls are never cached.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from airflow_llm_provider.cascades.cache import content_hash
from airflow_llm_provider.cascades.spec import ToolCachePolicy, ToolCaching

MISS = object()
"""What :meth:`ToolCache.get` returns when nothing is cached (``None`` may be a cached result)."""


class ToolCache:
    """An in-memory LRU cache of tool results, configured by a cascade's ``tool_caching``."""

    def __init__(
        self,
        config: ToolCaching,
        resolve: Callable[[str], Callable[..., Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._resolve = resolve
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def policy(self, tool: str) -> ToolCachePolicy | None:
        """The policy caching ``tool``, or None when its results are never cached."""
        if not self.config.enabled:
            return None
        policy = self.config.tools.get(tool)
        return policy if policy is not None and policy.enabled else None

    def get(self, tool: str, arguments: Mapping[str, Any]) -> Any:
        """The cached result of ``tool`` for ``arguments``, or :data:`MISS`."""
        policy = self.policy(tool)
        if policy is None:
            return MISS
        key = self.key(tool, arguments, policy)
        entry = self._entries.get(key)
        if entry is not None:
            stored_at, result = entry
            if self._clock() - stored_at < self._ttl(policy):
                self._entries.move_to_end(key)
                self.hits += 1
                return result
            del self._entries[key]
        self.misses += 1
        return MISS

    def put(self, tool: str, arguments: Mapping[str, Any], result: Any) -> None:
        policy = self.policy(tool)
        if policy is None:
            return
        key = self.key(tool, arguments, policy)
        self._entries[key] = (self._clock(), result)
        self._entries.move_to_end(key)
        while len(self._entries) > self.config.max_cache_size:
            self._entries.popitem(last=False)

    def key(self, tool: str, arguments: Mapping[str, Any], policy: ToolCachePolicy) -> str:
        if policy.key == "query":
            return f"{tool}:query:{content_hash(str(arguments.get('query', '')))}"
        if policy.key == "sql_hash":
            return f"{tool}:sql:{content_hash(str(arguments.get('sql', '')))}"
        if policy.key == "custom" and policy.custom_key_fn and self._resolve is not None:
            return f"{tool}:custom:{self._resolve(policy.custom_key_fn)(dict(arguments))}"
        return f"{tool}:{content_hash(dict(arguments))}"

    def _ttl(self, policy: ToolCachePolicy) -> float:
        return float(policy.ttl if "ttl" in policy.model_fields_set else self.config.global_ttl)

"""The model responses of a run, kept so that running it again after a human answered replays them.

A question can come in the middle of an LLM phase (the model calls ``ask_human``). The phase cache
keeps finished phases only, so the phase that asked would be paid again when the run resumes. The
journal records every response by the request it answered; the resumed run sends the same
requests up to the question (same prompts, same recorded replies) and each is answered from the
journal instead of the endpoint. A request that differs (an edited cascade) is simply sent.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any

# Metadata that differs between two sendings of the same request (clocks, ids of the run, and the
# usage of a replayed reply, zeroed so it is not counted twice).
_VOLATILE_KEYS = frozenset(
    {"timestamp", "run_id", "conversation_id", "provider_response_id", "provider_details", "usage"}
)


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def request_fingerprint(
    model_name: str, messages: list[Any], settings: Mapping[str, Any] | None, scope: str = ""
) -> str:
    """One key per request content (model, messages without timestamps, settings) and call site
    (``scope``: cascade, phase, sounding and attempt)."""
    from pydantic_ai.messages import ModelMessagesTypeAdapter

    payload = {
        "model": model_name,
        "scope": scope,
        "messages": _stable(ModelMessagesTypeAdapter.dump_python(messages, mode="json")),
        "settings": {k: v for k, v in (settings or {}).items() if k != "max_tokens"},
    }
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResponseJournal:
    """Responses by request fingerprint: those of an earlier run to replay, and this run's."""

    def __init__(self, entries: Mapping[str, list[str]] | None = None) -> None:
        self._replay = {key: list(values) for key, values in (entries or {}).items()}
        self._entries: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self.replayed = 0

    def replay(self, fingerprint: str) -> Any | None:
        """The recorded response to this request (each recorded one is served once), or None."""
        from pydantic_ai.messages import ModelMessagesTypeAdapter

        with self._lock:
            queue = self._replay.get(fingerprint)
            if not queue:
                return None
            text = queue.pop(0)
            self._entries.setdefault(fingerprint, []).append(text)
            self.replayed += 1
        (response,) = ModelMessagesTypeAdapter.validate_json(text)
        return response

    def record(self, fingerprint: str, response: Any) -> None:
        from pydantic_ai.messages import ModelMessagesTypeAdapter

        text = ModelMessagesTypeAdapter.dump_json([response]).decode("utf-8")
        with self._lock:
            self._entries.setdefault(fingerprint, []).append(text)

    def entries(self) -> dict[str, list[str]]:
        """What to hand the next run: every response this run got, replayed or paid for."""
        with self._lock:
            return {key: list(values) for key, values in self._entries.items()}

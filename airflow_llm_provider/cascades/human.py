"""Human input for the engine: a question, who answers it, and what happens while nobody has.

Windlass blocks a thread until a human answers (``ask_human``, ``request_decision``...). Here the
engine asks a :class:`HumanChannel` the host lends it (``ToolServices.human``):

- ``airflow-llm run`` answers on the terminal when it has one, or from ``--answers FILE``;
- the Airflow operators answer from the answers collected so far and, for a new question, raise
  :class:`HumanInputNeeded`: the task parks in Airflow's human-in-the-loop (no worker slot while
  it waits) and, once answered, runs the cascade again with one answer more. The phase cache and
  the :class:`ResponseJournal` make that second run pay for nothing twice.

No Airflow import here: the Airflow part lives in ``operators/cascade_human.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

NO_RESPONSE = "[No response from human]"
"""What ``ask_human`` answers when the wait times out (Windlass's text)."""

Kind = Literal["text", "decision", "signal"]
"""``signal``: not a human but another workflow (``await_signal``); ``question`` is the signal's
name, the answer's ``text`` its payload as JSON."""


@dataclass(frozen=True)
class HumanOption:
    id: str
    label: str
    description: str = ""


@dataclass(frozen=True)
class HumanRequest:
    """One question to a human."""

    key: str
    """Stable within a run: the same question asked again after a resume has the same key."""
    phase: str
    kind: Kind
    question: str
    context: str = ""
    options: tuple[HumanOption, ...] = ()
    """For ``decision``: the choices (``request_decision``, ``ask_human_custom(options=...)``)."""
    allow_custom: bool = False
    """A decision may be answered with free text instead of an option."""
    timeout_seconds: float | None = None
    cascade_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "options": [asdict(option) for option in self.options]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HumanRequest:
        options = tuple(HumanOption(**dict(o)) for o in data.get("options") or ())
        return cls(**{**dict(data), "options": options})


@dataclass(frozen=True)
class HumanAnswer:
    """What a human said: free text (``text``) or an option id (``choice``), or nothing in time."""

    text: str | None = None
    choice: str | None = None
    timed_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HumanAnswer:
        return cls(**dict(data))


class HumanInputNeeded(BaseException):
    """No answer yet to ``request``: the host should ask and run again once answered.

    A ``BaseException`` (as Airflow's ``TaskDeferred``): the engine's ``except Exception`` error
    handling, which turns a failing tool into a failed phase, must not swallow a question."""

    def __init__(self, request: HumanRequest) -> None:
        super().__init__(f"phase '{request.phase}' waits for a human answer: {request.question[:200]}")
        self.request = request


class HumanUnavailable(RuntimeError):
    """The cascade asks a human and nobody can answer here; the message says how to answer."""


class HumanChannel(Protocol):
    """Who answers the engine's questions."""

    def ask(self, request: HumanRequest) -> HumanAnswer:
        """The answer, or raise :class:`HumanInputNeeded` (answer later) or
        :class:`HumanUnavailable`."""
        ...


def request_key(phase: str, kind: str, question: str, occurrence: int) -> str:
    """``phase/kind/<hash of the question>/<n>``: the n-th time this phase asks this question."""
    digest = hashlib.sha256(question.encode("utf-8")).hexdigest()[:12]
    return f"{phase}/{kind}/{digest}/{occurrence}"


class QuestionCounter:
    """Numbers the questions of one run so a re-run gives each the key it had."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()

    def key(self, phase: str, kind: str, question: str) -> str:
        with self._lock:
            count = self._seen.get((phase, kind, question), 0)
            self._seen[(phase, kind, question)] = count + 1
        return request_key(phase, kind, question, count)


@dataclass
class RecordedAnswers:
    """Answers known so far, by request key; a new question raises :class:`HumanInputNeeded`
    (the Airflow operators park the task and come back with the answer)."""

    answers: dict[str, HumanAnswer] = field(default_factory=dict)

    def ask(self, request: HumanRequest) -> HumanAnswer:
        answer = self.answers.get(request.key)
        if answer is None:
            raise HumanInputNeeded(request)
        return answer


class ScriptedAnswers:
    """Answers from a file (``airflow-llm run --answers FILE``), for scripted runs and CI.

    The file maps a phase name to its answer, or to a list of answers given in order when the
    phase asks more than once. An answer is text, or an option id for a decision. A question the
    file does not answer goes to ``fallback`` (the terminal) or fails naming the phase."""

    def __init__(self, answers: Mapping[str, Any], source: str, fallback: HumanChannel | None = None) -> None:
        self._queues = {
            str(phase): list(value) if isinstance(value, list) else [value]
            for phase, value in answers.items()
        }
        self._source = source
        self._fallback = fallback
        self._lock = threading.Lock()

    def ask(self, request: HumanRequest) -> HumanAnswer:
        with self._lock:
            queue = self._queues.get(request.phase)
            value = queue.pop(0) if queue else None
        if value is None:
            if self._fallback is not None:
                return self._fallback.ask(request)
            raise HumanUnavailable(
                f"phase '{request.phase}' asks a human ({request.question[:120]!r}) and {self._source} "
                f"has no answer left for it; add one under `{request.phase}:`"
            )
        return answer_from_value(request, value)


def answer_from_value(request: HumanRequest, value: Any) -> HumanAnswer:
    """A scripted or typed answer for ``request``: an option id (or label) picks that option."""
    text = value if isinstance(value, str) else json.dumps(value)
    if request.kind == "decision":
        for option in request.options:
            if text in (option.id, option.label):
                return HumanAnswer(choice=option.id)
        if not request.allow_custom:
            known = ", ".join(o.id for o in request.options)
            raise HumanUnavailable(
                f"phase '{request.phase}': {text!r} is not one of the options ({known}) "
                f"of {request.question[:80]!r}"
            )
    return HumanAnswer(text=text)


class TerminalChannel:
    """Asks on the terminal (``airflow-llm run`` in an interactive shell)."""

    def __init__(
        self, read: Callable[[str], str] = input, write: Callable[[str], Any] = sys.stderr.write
    ) -> None:
        self._read, self._write = read, write
        self._lock = threading.Lock()  # parallel phases ask one at a time

    def ask(self, request: HumanRequest) -> HumanAnswer:
        with self._lock:
            self._write(f"\n[{request.cascade_id} · {request.phase}] {request.question}\n")
            if request.context:
                self._write(f"{request.context}\n")
            for option in request.options:
                hint = f" — {option.description}" if option.description else ""
                self._write(f"  {option.id}: {option.label}{hint}\n")
            while True:
                try:
                    value = self._read("> ").strip()
                except EOFError:
                    raise HumanUnavailable(
                        f"phase '{request.phase}' asks a human and the terminal closed"
                    ) from None
                try:
                    return answer_from_value(request, value)
                except HumanUnavailable as err:
                    self._write(f"{err}\n")


class NobodyToAsk:
    """No terminal and no answers file: a question fails the phase, saying how to answer it."""

    def ask(self, request: HumanRequest) -> HumanAnswer:
        raise HumanUnavailable(
            f"phase '{request.phase}' asks a human ({request.question[:120]!r}) and nobody can answer "
            "here: run it in an interactive terminal, pass `--answers FILE` (phase: answer), or run "
            "it on Airflow 3.3+, where the question waits in the UI's required actions"
        )


async def ask(
    channel: HumanChannel | None, request: HumanRequest, emit: Callable[[str], None]
) -> HumanAnswer:
    """Put ``request`` to ``channel`` (None: :class:`NobodyToAsk`) off the event loop: a terminal
    read blocks, and the run's other phases go on meanwhile."""
    emit(f"phase {request.phase}: asks a human: {request.question[:200]}")
    return await asyncio.to_thread((channel or NobodyToAsk()).ask, request)

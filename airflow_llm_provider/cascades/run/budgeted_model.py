"""A pydantic-ai model whose every request is reserved and capped in the budget before it is sent.

An agent run may make several model requests (tool loops, output retries); wrapping the model, not
the run, puts each of them through the budget with an output cap sized to what is left.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

from airflow_llm_provider.cascades.budget import CallAccount
from airflow_llm_provider.cascades.run.journal import ResponseJournal, request_fingerprint
from airflow_llm_provider.cascades.usage import Reservation


def budgeted_model(
    model: Any, account: CallAccount, journal: ResponseJournal | None = None, journal_scope: str = ""
) -> Any:
    """``model`` with each request reserved and capped in ``account`` (settled with the usage the
    server reported, released when the request fails). With a ``journal``, a request it holds a
    response for is answered from it, free, and every paid response is recorded in it."""
    return _budgeted_model_class()(model, account, journal, journal_scope)


# Keys of pydantic-ai's serialised messages whose values are sent to the model (the rest is
# metadata: timestamps, ids, usage). Instructions are taken from the request parameters instead:
# every request message repeats them, but they are sent once.
_SENT_KEYS = frozenset({"content", "args", "tool_name"})


def _request_input_bounds(messages: list[Any], parameters: Any) -> tuple[int, int]:
    """(estimate, upper bound) of the prompt tokens of one model request.

    The estimate is the usual 4 bytes a token, plus chat framing (4 tokens a message part, 8 a
    request). The bound counts every UTF-8 byte as a token (a byte-level BPE token covers at least
    one byte), plus 8 tokens a part and 32 a request of framing: no text prompt has more tokens."""
    from pydantic_ai.messages import ModelMessagesTypeAdapter
    from pydantic_core import to_json

    size = parts = 0

    def count(value: Any) -> None:
        nonlocal size, parts
        size += len(value.encode()) if isinstance(value, str) else len(to_json(value))
        parts += 1

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in _SENT_KEYS and item is not None:
                    count(item)
                elif isinstance(item, dict | list):
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(ModelMessagesTypeAdapter.dump_python(messages, mode="json"))
    instruction_parts = getattr(parameters, "instruction_parts", None)
    if instruction_parts is not None:
        for part in instruction_parts:
            count(part.content)
    else:  # no parameters' view of the instructions: the latest request's
        requests = [m for m in messages if m.kind == "request"]
        latest = getattr(requests[-1], "instructions", None) if requests else None
        if latest:
            count(latest)
    for tool in [*getattr(parameters, "function_tools", []), *getattr(parameters, "output_tools", [])]:
        count({"name": tool.name, "description": tool.description, "parameters": tool.parameters_json_schema})
    output_object = getattr(parameters, "output_object", None)
    if output_object is not None:
        count(output_object.json_schema)
    template = getattr(parameters, "prompted_output_template", None)
    if template:
        count(template)
    return math.ceil(size / 4) + 4 * parts + 8, size + 8 * parts + 32


async def _reserve_request(
    account: CallAccount, messages: list[Any], settings: Any, parameters: Any
) -> tuple[Reservation, Any]:
    """Reserve one request in its call's account; the settings to send it with (the account's
    output cap merged over whatever was set, which it never raises)."""
    estimate, bound = _request_input_bounds(messages, parameters)
    requested = (settings or {}).get("max_tokens")
    reservation = await account.reserve(
        input_estimate=estimate,
        input_bound=bound,
        requested_cap=requested if isinstance(requested, int) else None,
    )
    if reservation.output_cap is None:
        return reservation, settings
    return reservation, {**(settings or {}), "max_tokens": reservation.output_cap}


@functools.cache
def _budgeted_model_class() -> type[Any]:
    """``BudgetedModel(model, account)``: ``model`` with each request reserved and capped in
    ``account``. Built on first use: the engine imports pydantic-ai only when it calls a model."""
    from pydantic_ai.models.wrapper import WrapperModel
    from pydantic_ai.usage import RequestUsage

    class BudgetedModel(WrapperModel):
        def __init__(
            self, wrapped: Any, account: CallAccount, journal: ResponseJournal | None, scope: str
        ) -> None:
            super().__init__(wrapped)
            self.account = account
            self.journal = journal
            self.scope = scope

        async def request(self, messages: Any, model_settings: Any, model_request_parameters: Any) -> Any:
            fingerprint = None
            if self.journal is not None:
                fingerprint = request_fingerprint(self.model_name, messages, model_settings, self.scope)
                replayed = self.journal.replay(fingerprint)
                if replayed is not None:  # paid for by the run before the resume
                    self.account.replayed += 1
                    return dataclasses.replace(replayed, usage=RequestUsage())
            reservation, settings = await _reserve_request(
                self.account, messages, model_settings, model_request_parameters
            )
            try:
                response = await self.wrapped.request(messages, settings, model_request_parameters)
            except BaseException:
                self.account.release(reservation)
                raise
            usage = response.usage
            self.account.settle(reservation, usage.input_tokens or 0, usage.output_tokens or 0)
            if self.journal is not None and fingerprint is not None:
                self.journal.record(fingerprint, response)
            return response

        def request_stream(self, *args: Any, **kwargs: Any) -> Any:
            # A streamed reply's usage arrives with its last chunk; nothing in the engine streams,
            # and a stream that slipped past the budget would be worse than this error.
            raise NotImplementedError("budgeted LLM calls are not streamed")

    return BudgetedModel

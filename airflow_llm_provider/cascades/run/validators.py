"""Running one validator by the ``{valid, reason}`` protocol, resolved as Windlass resolves it.

A name is looked up in this order: the cascade's ``validators:`` (an LLM validator), a registered
tool function (or ``python:module.function``), then a cascade with that ``cascade_id`` on the
tool path, run as a sub-cascade with ``{content, original_input}``. Inline code validators
(``{python: ...}``, ``{bash: ...}``, ``{javascript: ...}``) run out of process in
:mod:`~airflow_llm_provider.cascades.sandbox`; ``{tool: name, inputs: {...}}`` calls a registered
tool. A name that resolves nowhere is an error, never a pass.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from airflow_llm_provider.cascades.references import CascadeTool, find_cascade_tool, tool_path_of_folder
from airflow_llm_provider.cascades.run.base import RunnerBase
from airflow_llm_provider.cascades.run.core import _to_text
from airflow_llm_provider.cascades.run.results import PhaseFailed
from airflow_llm_provider.cascades.spec import PolyglotValidator, ValidatorRef, ValidatorSpec, validator_label
from airflow_llm_provider.cascades.tools import ToolNotFound, call_tool

MAX_VALIDATOR_DEPTH = 5
"""Validator cascades may validate with cascades, but not forever."""

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


class ValidatorsMixin(RunnerBase):
    """Resolves and runs validators."""

    async def _validate(self, validator: ValidatorRef, content: Any) -> tuple[bool, str]:
        """``(valid, reason)`` of ``validator`` on ``content``."""
        verdict: Any
        if isinstance(validator, PolyglotValidator):
            verdict = await self._inline_validator(validator, content)
        elif (spec := self.cascade.validators.get(validator)) is not None:
            verdict = await self._llm_validator(validator, spec, content)
        elif (function := self._validator_function(validator)) is not None:
            verdict = await call_tool(function, {"content": content})
        else:
            folders = tool_path_of_folder(self.base_dir, self.options.tool_path)
            tool = find_cascade_tool(validator, folders)
            if tool is None:
                raise PhaseFailed(
                    "validator",
                    f"validator '{validator}' is not in `validators:`, not a registered tool and no "
                    f"cascade with that cascade_id is on the tool path ({len(folders)} folder(s))",
                )
            verdict = await self._cascade_validator(tool, content)
        return _as_verdict(validator_label(validator), verdict)

    def _validator_description(self, validator: ValidatorRef) -> str:
        """What a named tool or cascade validator checks (the first docstring line, or the
        cascade's ``description``), for the goal told to the model, as Windlass reads its manifest."""
        if not isinstance(validator, str) or validator in self.cascade.validators:
            return ""
        try:
            function = self._validator_function(validator)
        except ToolNotFound:
            return ""
        if function is not None:
            lines = (inspect.getdoc(function) or "").strip().splitlines()
            return lines[0] if lines else ""
        tool = find_cascade_tool(validator, tool_path_of_folder(self.base_dir, self.options.tool_path))
        return tool.description.strip() if tool is not None else ""

    def _validator_function(self, name: str) -> Callable[..., Any] | None:
        try:
            return self.tools.resolve(name)
        except ToolNotFound:
            if name.startswith("python:"):
                raise  # a python: reference that does not import is an error, not a cascade name
            return None

    async def _llm_validator(self, name: str, spec: ValidatorSpec, content: Any) -> Any:
        """A ``validators:`` entry: its instructions see ``input.content`` and
        ``input.original_input`` (as in Windlass, where the validator's input is those two)."""
        from pydantic import BaseModel

        class Verdict(BaseModel):
            valid: bool
            reason: str = ""

        text = _to_text(content)
        variables = {
            "input": {"content": text, "original_input": self._input},
            "content": text,
            "original_input": self._input,
        }
        instructions = self.render(spec.instructions, variables)
        model = spec.model or self.cascade.defaults.model or self.options.model
        result = await self._ask(
            model,
            instructions,
            "## Content to validate\n" + text,
            phase=f"validator {name}",
            label=f"validator:{name}",
            output_type=Verdict,
        )
        return result.output.model_dump()

    async def _cascade_validator(self, tool: CascadeTool, content: Any) -> Any:
        """A validator cascade, run as a child sharing this run's usage and budget; its final
        output is read as the ``{valid, reason}`` JSON."""
        from airflow_llm_provider.cascades.loader import load_cascade

        if self.depth >= MAX_VALIDATOR_DEPTH:
            raise PhaseFailed(
                "validator", f"validator cascades nest deeper than {MAX_VALIDATOR_DEPTH} levels"
            )
        child = type(self)(load_cascade(tool.path), self.options, parent=self, base_dir=tool.path.parent)
        self._emit(f"validator cascade {tool.cascade_id} ({tool.path.name}): started")
        try:
            final = await child.execute({"content": _to_text(content), "original_input": self._input})
        except PhaseFailed as err:
            raise PhaseFailed("validator", f"validator cascade '{tool.cascade_id}' failed: {err}") from err
        return final if isinstance(final, Mapping) else parse_verdict(_to_text(final))

    async def _inline_validator(self, validator: PolyglotValidator, content: Any) -> Any:
        """Inline code. As in Windlass, code that crashes or times out rejects the output (the
        reason says why), while a missing runtime is an error."""
        from airflow_llm_provider.cascades.sandbox import SandboxError, run_validator_code

        text = _to_text(content)
        if validator.tool is not None:
            variables = {"content": text, "original_input": self._input}
            inputs = (
                self._render_value(validator.inputs, variables) if validator.inputs else {"content": text}
            )
            return await call_tool(self.tools.resolve(validator.tool), inputs)
        language = validator.language
        if language == "sql":
            return await self._sql_validator(validator, text)
        try:
            ran = await run_validator_code(language, getattr(validator, language), text, self._input)
        except SandboxError as err:
            raise PhaseFailed("validator", str(err)) from err
        if ran.timed_out:
            return {"valid": False, "reason": f"{validator.label} timed out"}
        if ran.returncode != 0:
            return {
                "valid": False,
                "reason": f"{validator.label} failed: {_failure(ran.returncode, ran.stderr)}",
            }
        if language == "bash":
            return parse_verdict(ran.stdout)
        try:
            result = json.loads(ran.stdout)["result"]
        except (ValueError, KeyError, TypeError):
            return {"valid": False, "reason": f"{validator.label} wrote unreadable output"}
        if result is None:
            return {"valid": False, "reason": f"{validator.label} did not set `result`"}
        return result

    async def _sql_validator(self, validator: PolyglotValidator, text: str) -> dict[str, Any]:
        """``{sql: ...}``: the query runs on the run's session database (``tools/session_db.py``:
        earlier phases' ``_<phase>`` tables), which also holds a one-row table ``_validation(content,
        original_input)`` with what is judged; the first row's ``valid`` and ``reason`` columns are
        the verdict (Windlass's documented protocol), no row or no ``valid`` column rejects."""
        from airflow_llm_provider.cascades.tools import session_db

        context = self._tool_context("validator", deterministic=True)
        judged = [{"content": text, "original_input": json.dumps(self._input, default=str)}]

        def run() -> tuple[list[str], list[Any]]:
            session_db.ensure_output_tables(context)
            session_db.create_table(context, "_validation", judged)
            return session_db.query(context, validator.sql or "", 1)

        try:
            columns, rows = await asyncio.to_thread(run)
        except Exception as err:  # a broken query rejects, as a crashing validator does
            return {"valid": False, "reason": f"{validator.label} failed: {err}"}
        if not rows or "valid" not in columns:
            return {"valid": False, "reason": f"{validator.label} returned no row with a `valid` column"}
        row = dict(zip(columns, rows[0], strict=True))
        return {"valid": bool(row["valid"]), "reason": str(row.get("reason") or "no reason given")}


def _failure(returncode: int, stderr: str) -> str:
    if returncode < 0 or returncode > 128:  # bubblewrap reports a signal as 128 + its number
        signal = -returncode if returncode < 0 else returncode - 128
        return f"killed by signal {signal} (a CPU, memory or file size limit)"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {returncode}"


def parse_verdict(text: str) -> dict[str, Any]:
    """``{valid, reason}`` from a validator's text answer: the whole text as JSON, a fenced
    ```json block, or the first ``{...}`` object in it; otherwise a rejection quoting the text."""
    candidates = [text.strip()]
    candidates += [match.group(1).strip() for match in _FENCE.finditer(text)]
    start = text.find("{")
    if start >= 0:
        candidates.append(_first_object(text[start:]))
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, Mapping) and "valid" in value:
            return dict(value)
    return {"valid": False, "reason": f"validator answer is not {{valid, reason}} JSON: {text.strip()[:300]}"}


def _first_object(text: str) -> str:
    """The first balanced ``{...}`` at the start of ``text`` (string-aware)."""
    depth, in_string, escaped = 0, False, False
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[: index + 1]
    return text


def _as_verdict(label: str, verdict: Any) -> tuple[bool, str]:
    if isinstance(verdict, bool):
        return verdict, "" if verdict else f"{label} said no"
    if isinstance(verdict, str):
        verdict = parse_verdict(verdict)
    if isinstance(verdict, Mapping) and "valid" in verdict:
        return bool(verdict["valid"]), str(verdict.get("reason") or "")
    raise PhaseFailed("validator", f"validator '{label}' returned {verdict!r}, not {{valid, reason}}")

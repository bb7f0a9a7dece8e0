"""Windlass conformance: how many of Windlass's own cascades validate and run here, unchanged.

Reads the corpus from its path (never copies it): by default ``../shared/conformance/windlass``
next to this checkout. Validation is the migration report of ``airflow-llm validate --report``.
Every file that validates is then run as ``airflow-llm run`` runs it (the ``pydanticai`` connection
through ``LLMHook``, the Airflow tools, the cascade's folder as base) against a local
``ScriptedOpenAIServer`` whose responder answers every structured-output request with a
schema-valid object and anything else with ``1`` (``airflow_llm_provider.testing.responders``);
questions to a human get a synthetic answer too (:class:`SyntheticHuman`).
"Success" means control flow, templates, schemas, soundings and context ran end to end; the
answers are synthetic by construction and say nothing about quality.

Each input named in ``inputs_schema`` gets the text ``"sample text about apples"``.
The anchor is the corpus itself: the figures are fractions of its files.

    .venv/bin/python bench/windlass_conformance.py [--corpus DIR] [--timeout 60] [--only NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "conformance" / "windlass"
SAMPLE_INPUT = "sample text about apples"


class SyntheticHuman:
    """Answers every question to a human at once, as the synthetic LLM answers: the first option
    of a decision (the first attempt of a judged sounding), ``yes`` to free text. Exercises the
    human-input paths; says nothing about what a person would choose."""

    def ask(self, request: Any) -> Any:
        from airflow_llm_provider.cascades.human import HumanAnswer

        if request.options:
            return HumanAnswer(choice=request.options[0].id)
        return HumanAnswer(text="yes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per cascade run")
    parser.add_argument("--only", default=None, help="run only files whose path contains this")
    parser.add_argument("--no-run", action="store_true", help="validation figures only")
    args = parser.parse_args()
    if not args.corpus.is_dir():
        print(f"error: corpus {args.corpus} not found", file=sys.stderr)
        return 2
    os.environ.setdefault("AIRFLOW_LLM_VALIDATION_CACHE", "0")

    from airflow_llm_provider.cascades.loader import CASCADE_SUFFIXES, check_cascade
    from airflow_llm_provider.cascades.report import MigrationReport, file_report

    files = sorted(p for p in args.corpus.rglob("*") if p.is_file() and p.suffix.lower() in CASCADE_SUFFIXES)
    if args.only:
        files = [p for p in files if args.only in str(p)]
    reports, valid = [], []
    for path in files:
        result = check_cascade(path)
        reports.append(file_report(str(path.relative_to(args.corpus)), result.issues, result.warnings))
        if result.cascade is not None:
            valid.append((path, result.cascade))
    report = MigrationReport(reports)
    counts = report.counts()
    output: dict[str, Any] = {
        "corpus": str(args.corpus),
        "files": len(files),
        "validate": {**counts, "accepted": counts["ok"] + counts["warning"]},
        "blocking_features": report.to_dict()["blocking_features"],
    }
    if not args.no_run:
        with contextlib.redirect_stdout(sys.stderr):  # Airflow logs to stdout; keep it for the JSON
            runs = _run_all(valid, args.timeout)
        statuses = Counter(run["status"] for run in runs)
        output["run"] = {
            "attempted": len(runs),
            "success": statuses.get("success", 0),
            "failed": statuses.get("failed", 0),
            "timeout": statuses.get("timeout", 0),
            "success_of_corpus": round(statuses.get("success", 0) / len(files), 3) if files else 0.0,
            "failures": [run for run in runs if run["status"] != "success"],
            "requests": sum(run.get("requests", 0) for run in runs),
        }
    json.dump(output, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _run_all(valid: list[tuple[Path, Any]], timeout: float) -> list[dict[str, Any]]:
    from airflow_llm_provider.testing.openai_server import ScriptedOpenAIServer
    from airflow_llm_provider.testing.responders import schema_valid_reply

    runs = []
    with ScriptedOpenAIServer(responder=schema_valid_reply) as server:
        connection = server.connection(model="conformance")
        os.environ["AIRFLOW_CONN_PYDANTICAI_DEFAULT"] = json.dumps(connection)
        for path, cascade in valid:
            before = len(server.requests)
            started = time.monotonic()
            runs.append(
                {
                    "file": path.name,
                    **_run_one(path, cascade, timeout),
                    "requests": len(server.requests) - before,
                    "seconds": round(time.monotonic() - started, 2),
                }
            )
            print(f"{runs[-1]['status']:>8}  {path.name}", file=sys.stderr, flush=True)
    return runs


def _run_one(path: Path, cascade: Any, timeout: float) -> dict[str, Any]:
    from airflow_llm_provider.cascades.runner import CascadeRunner, RunOptions
    from airflow_llm_provider.cascades.trust import connection_ids
    from airflow_llm_provider.hooks.llm import LLMHook
    from airflow_llm_provider.operators.cascade_tools import airflow_tool_services, airflow_tools

    hook = LLMHook(llm_conn_id="pydanticai_default")
    options = RunOptions(
        model_factory=hook.model_for,
        tools=airflow_tools(),
        tool_services=airflow_tool_services(conn_ids=connection_ids(cascade), human=SyntheticHuman()),
        base_dir=path.resolve().parent,
        on_event=lambda line: None,
    )
    inputs = {name: SAMPLE_INPUT for name in cascade.inputs_schema}

    runner = CascadeRunner(cascade, options)

    async def run() -> Any:
        try:
            return await asyncio.wait_for(runner.run(inputs), timeout)
        finally:
            runner.close_sessions()

    try:
        result = asyncio.run(run())
    except TimeoutError:
        return {"status": "timeout", "error": f"no result in {timeout:g} s"}
    except Exception as err:  # the engine should never raise; if it does, that is a finding
        return {"status": "failed", "error": f"engine raised {type(err).__name__}: {err}"}
    return {"status": result.status, "error": result.error}


if __name__ == "__main__":
    sys.exit(main())

"""``airflow-llm``: the provider's command line.

Subcommands import what they need when they run, so ``airflow-llm --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from airflow_llm_provider import __version__


def _cmd_info(args: argparse.Namespace) -> int:
    """Print what is installed and which LLM the default connection resolves to."""
    # Airflow and its providers log to stdout; keep stdout for the JSON answer alone.
    with contextlib.redirect_stdout(sys.stderr):
        report, ok = _collect_info(args.conn_id)
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


def _collect_info(conn_id: str | None) -> tuple[dict, bool]:
    import airflow

    from airflow_llm_provider.get_provider_info import get_provider_info
    from airflow_llm_provider.hooks.llm import LLMHook

    info = get_provider_info()
    hook = LLMHook(llm_conn_id=conn_id)
    ok, message = hook.test_connection()
    report = {
        "airflow_llm_provider": __version__,
        "airflow": airflow.__version__,
        "python": sys.version.split()[0],
        "llm_conn_id": hook.llm_conn_id,
        "llm": message if ok else f"unresolved: {message}",
        "hooks": [m for h in info.get("hooks", []) for m in h["python-modules"]],
        "plugins": [p["name"] for p in info.get("plugins", [])],
    }
    return report, ok


def _cmd_validate(args: argparse.Namespace) -> int:
    """Check cascade files; problems go to stdout as ``file:line: field: message``, one per line.

    With ``--report``: a migration report over whole folders (recursively), per file and per
    blocking feature, as text or ``--json``. Exit codes: 0 all valid, 2 any invalid or refused.
    """
    from pathlib import Path

    from airflow_llm_provider.cascades.loader import check_cascade

    files = _cascade_files(args.paths, recursive=args.report)
    if not files:
        print("error: no cascade files (*.yaml, *.yml, *.json) found", file=sys.stderr)
        return 2
    tool_path = [Path(p) for p in args.tool_path]
    if args.report:
        return _report(files, tool_path, as_json=args.json)
    invalid = 0
    for path in files:
        try:
            result = check_cascade(path, tool_path=tool_path)
        except Exception as exc:  # a bug of ours must still not print a traceback for a user's file
            print(f"{path}: <document>: internal error while validating: {exc!r}")
            invalid += 1
            continue
        for warning in result.warnings:
            print(f"{warning} (warning)")
        for issue in result.issues:
            print(issue)
        invalid += result.cascade is None
    if invalid:
        print(f"invalid: {invalid} of {len(files)} cascades", file=sys.stderr)
        return 2
    print(f"ok: {len(files)} cascades")
    return 0


def _cascade_files(paths: Sequence[str], *, recursive: bool) -> list:
    from pathlib import Path

    from airflow_llm_provider.cascades.loader import CASCADE_SUFFIXES

    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            files.extend(sorted(p for p in found if p.is_file() and p.suffix.lower() in CASCADE_SUFFIXES))
        else:
            files.append(path)
    return files


def _report(files: list, tool_path: list, *, as_json: bool) -> int:
    """The migration report; files that are not cascades at all (no ``cascade_id``/``phases``
    mapping, e.g. tool definitions or data) are listed as skipped."""
    from airflow_llm_provider.cascades.errors import ValidationIssue
    from airflow_llm_provider.cascades.loader import check_cascade, read_document
    from airflow_llm_provider.cascades.report import MigrationReport, file_report

    reports, skipped = [], []
    for path in files:
        data = read_document(path)
        if isinstance(data, dict) and not ({"cascade_id", "phases"} & set(data)):
            skipped.append(str(path))
            continue
        try:
            result = check_cascade(path, tool_path=tool_path)
        except Exception as exc:  # a bug of ours: reported as such, never a traceback
            issue = ValidationIssue(
                str(path), None, "<document>", f"internal error while validating: {exc!r}"
            )
            reports.append(file_report(str(path), [issue], []))
            continue
        reports.append(file_report(str(path), result.issues, result.warnings))
    report = MigrationReport(reports)
    if as_json:
        print(json.dumps({**report.to_dict(), "skipped": skipped}, indent=2))
    else:
        print(report.to_text())
        if skipped:
            print(f"\nskipped (not cascades): {len(skipped)}")
    counts = report.counts()
    return 2 if counts["refused"] or counts["invalid"] else 0


def _parse_input(raw: str | None) -> dict:
    """``--input`` as inline JSON or ``@file.json``, within the same bounds as a cascade file
    (size, nesting, number digits: ``cascades/limits.py``)."""
    from pathlib import Path

    from airflow_llm_provider.cascades.parsing import Collector, parse_document

    if raw is None:
        return {}
    text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
    collector = Collector(raw[1:] if raw.startswith("@") else "--input")
    value = parse_document(text, ".json", collector)
    if collector.issues:
        raise ValueError("; ".join(str(issue) for issue in collector.issues))
    if not isinstance(value, dict):
        raise ValueError("--input must be a JSON object")
    return value


def _cmd_run(args: argparse.Namespace) -> int:
    """Run a cascade in-process; JSON result on stdout, progress on stderr.

    Exit codes: 0 success, 1 the run failed, 2 the cascade (or the input) is invalid.
    """
    from pathlib import Path

    from airflow_llm_provider.cascades import CascadeValidationError, load_cascade

    try:
        cascade = load_cascade(args.cascade, tool_path=args.tool_path)
        inputs = _parse_input(args.input)
    except CascadeValidationError as err:
        print(err, file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        print(f"error: --input: {err}", file=sys.stderr)
        return 2
    try:
        human = _human_channel(args.answers)
    except (OSError, ValueError) as err:
        print(f"error: --answers: {err}", file=sys.stderr)
        return 2
    missing = None if args.allow_missing_inputs else cascade.missing_inputs(inputs)
    if missing:
        print(f"error: {missing}; pass it with --input (or --allow-missing-inputs)", file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    # Airflow and pydantic-ai log to stdout; keep stdout for the JSON answer alone.
    with contextlib.redirect_stdout(sys.stderr):
        from airflow_llm_provider.cascades.cache import open_cache
        from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
        from airflow_llm_provider.cascades.trust import connection_ids
        from airflow_llm_provider.costs.budgets import command_line_identity, configured_accounting
        from airflow_llm_provider.hooks.llm import LLMHook
        from airflow_llm_provider.operators.cascade_tools import airflow_tool_services, airflow_tools

        hook = LLMHook(llm_conn_id=args.conn_id or cascade.defaults.llm_conn_id, model=args.model)
        try:
            # The operator's ledger and shared budgets ([llm_provider] config, the file's budgets:)
            accounting = configured_accounting(
                command_line_identity(cascade),
                cascade_budgets=[budget.model_dump() for budget in cascade.budgets],
            )
        except ValueError as err:
            print(f"error: invalid LLM budget: {err}", file=sys.stderr)
            return 2
        options = RunOptions(
            model_factory=hook.model_for,
            tools=airflow_tools(),
            tool_services=airflow_tool_services(conn_ids=connection_ids(cascade), human=human),
            base_dir=Path(args.cascade).resolve().parent,
            tool_path=args.tool_path,
            model=args.model,
            declared_price=hook.declared_price(),
            cache=open_cache(args.cache),
            on_event=progress,
            call_observer=accounting,
        )
        result = run_cascade(cascade, inputs, options)
    print(json.dumps(result.to_dict(), indent=2, default=str))
    return 0 if result.status == "success" else 1


def _human_channel(answers_file: str | None) -> Any:
    """Who answers the cascade's questions to a human: the answers file, then the terminal when
    there is one; with neither, a question fails its phase saying how to answer it."""
    from pathlib import Path

    from airflow_llm_provider.cascades.human import NobodyToAsk, ScriptedAnswers, TerminalChannel
    from airflow_llm_provider.cascades.parsing import Collector, parse_document

    terminal = TerminalChannel() if sys.stdin.isatty() else None
    if answers_file is None:
        return terminal or NobodyToAsk()
    path = Path(answers_file)
    collector = Collector(answers_file)
    answers = parse_document(path.read_text(), path.suffix or ".yaml", collector)
    if collector.issues:
        raise ValueError("; ".join(str(issue) for issue in collector.issues))
    if not isinstance(answers, dict):
        raise ValueError(f"{answers_file}: expected a mapping of phase names to answers")
    return ScriptedAnswers(answers, source=answers_file, fallback=terminal)


def _cmd_render(args: argparse.Namespace) -> int:
    """Print the task graph a cascade renders to as a DAG; no Airflow DB (nor Airflow) needed.

    Exit codes: 0 rendered, 2 the cascade is invalid (``file:line: field: message`` on stdout).
    """
    from airflow_llm_provider.cascade_dags import dag_id_for, describe_plan, plan_cascade
    from airflow_llm_provider.cascades.loader import check_cascade

    try:
        result = check_cascade(args.cascade, tool_path=args.tool_path)
    except Exception as exc:  # a bug of ours must still not print a traceback for a user's file
        print(f"{args.cascade}: <document>: internal error while validating: {exc!r}")
        return 2
    for warning in result.warnings:
        print(f"{warning} (warning)")
    if result.cascade is None:
        for issue in result.issues:
            print(issue)
        print(f"invalid: {args.cascade}", file=sys.stderr)
        return 2
    try:
        plan = plan_cascade(result.cascade, dag_id_for(result.cascade, args.dag_id_prefix))
    except ValueError as exc:
        print(f"{args.cascade}: <document>: cannot render as a DAG: {exc}")
        return 2
    print(describe_plan(plan, result.cascade))
    return 0


def _tool_path_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--tool-path",
        action="append",
        default=[],
        metavar="DIR",
        help="more folders with tool/validator cascades (repeatable; also AIRFLOW_LLM_TOOL_PATH)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airflow-llm",
        description="Run, validate and inspect LLM workflows of airflow-llm-provider.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser("info", help="show versions and the LLM the default connection resolves to")
    info.add_argument("--conn-id", default=None, help="LLM connection id (default: pydanticai_default)")
    info.set_defaults(handler=_cmd_info)

    validate = commands.add_parser("validate", help="check cascade files (YAML/JSON) strictly")
    validate.add_argument("paths", nargs="+", metavar="PATH", help="cascade file or directory of them")
    validate.add_argument(
        "--report",
        action="store_true",
        help="migration report over whole folders (recursive): per file and per blocking feature",
    )
    validate.add_argument("--json", action="store_true", help="with --report: the report as JSON")
    _tool_path_option(validate)
    validate.set_defaults(handler=_cmd_validate)

    run = commands.add_parser("run", help="run a cascade in-process and print its result as JSON")
    run.add_argument("cascade", metavar="CASCADE", help="cascade file (YAML/JSON)")
    run.add_argument("--input", default=None, help="input as JSON, or @file.json")
    run.add_argument("--conn-id", default=None, help="LLM connection id (default: pydanticai_default)")
    run.add_argument("--model", default=None, help="model for every phase, e.g. openai-chat:gpt-4o-mini")
    run.add_argument("--cache", default=None, help="phase cache: local, dir:PATH, postgresql://..., conn:ID")
    run.add_argument(
        "--answers",
        default=None,
        metavar="FILE",
        help="answers to the cascade's questions to a human (YAML/JSON: phase: answer, or a list in order)",
    )
    run.add_argument(
        "--allow-missing-inputs",
        action="store_true",
        help="run even when --input lacks inputs of inputs_schema (they render empty, as in Windlass)",
    )
    _tool_path_option(run)
    run.set_defaults(handler=_cmd_run)

    render = commands.add_parser("render", help="print the task graph a cascade renders to as a DAG")
    render.add_argument("cascade", metavar="CASCADE", help="cascade file (YAML/JSON)")
    render.add_argument(
        "--dag-id-prefix", default="cascade_", help="prefix of DAG ids without airflow.dag_id"
    )
    _tool_path_option(render)
    render.set_defaults(handler=_cmd_render)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a bug of ours: one line with the cause, no traceback unless asked
        if os.environ.get("AIRFLOW_LLM_DEBUG"):
            raise
        from airflow_llm_provider.cascades.redact import redact

        print(f"internal error: {type(err).__name__}: {redact(str(err))[:2000]}", file=sys.stderr)
        print(
            "this is a bug in airflow-llm-provider (set AIRFLOW_LLM_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())

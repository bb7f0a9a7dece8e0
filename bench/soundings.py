"""(b) Soundings factor 5: one phase with ``soundings: {factor: 5, max_parallel: 5}`` plus an
evaluator, against one plain call's latency, both against one ScriptedOpenAIServer with a fixed
latency. Result: the soundings' wall time / one plain call (goal <= 1.2).

Both figures come from the times the server recorded, so client start-up is outside both: the
soundings' wall time is first attempt arrival -> last attempt answered (the evaluator's request
excluded); the plain call's is its arrival -> answered. The whole phase (client wall clock,
evaluator included) is reported too, against a plain call's client wall clock.
"""

from __future__ import annotations

import asyncio
import time

from _common import arguments, build_model, finish, machine, model_factory, summary

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.testing.openai_server import ScriptedOpenAIServer, structured, text

LATENCY = 0.2
FACTOR = 5
GOAL = 1.2

CASCADE = load_cascade(
    {
        "cascade_id": "bench_soundings",
        "phases": [
            {
                "name": "write",
                "instructions": "Write a tagline for {{ input.product }}.",
                "soundings": {
                    "factor": FACTOR,
                    "max_parallel": FACTOR,
                    "evaluator_instructions": "Pick the best tagline.",
                },
            }
        ],
    }
)
INPUT = {"product": "a rain jacket"}


def is_evaluator(request) -> bool:
    return any(name.startswith("final_result") for name in request.tool_names)


def respond(request):
    if is_evaluator(request):
        return structured({"winner": 2, "reason": "shortest"})
    return text(f"Tagline {request.index}: stay dry.")


def plain_call(model) -> float:
    from pydantic_ai import Agent

    async def call() -> None:
        await Agent(model, instructions="Write a tagline for a rain jacket.").run("Begin.")

    started = time.perf_counter()
    asyncio.run(call())
    return time.perf_counter() - started


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    with ScriptedOpenAIServer(responder=respond, latency=LATENCY) as server:
        model = build_model(server.base_url)
        options = RunOptions(model_factory=model_factory(model))
        run_cascade(CASCADE, INPUT, options)  # warm-up
        plain_call(model)

        ratios: list[float] = []
        phase_ratios: list[float] = []
        windows: list[float] = []
        spreads: list[float] = []
        plain_spans: list[float] = []
        phase_walls: list[float] = []
        for _ in range(args.repetitions):
            mark = len(server.requests)
            plain_wall = plain_call(model)
            (plain,) = server.requests[mark:]
            plain_span = plain.answered_at - plain.arrived_at

            mark = len(server.requests)
            started = time.perf_counter()
            result = run_cascade(CASCADE, INPUT, options)
            phase_wall = time.perf_counter() - started
            if result.status != "success":
                raise SystemExit(f"engine run failed: {result.error}")
            requests = server.requests[mark:]
            attempts = [r for r in requests if not is_evaluator(r)]
            if len(attempts) != FACTOR or len(requests) != FACTOR + 1:
                raise SystemExit(f"expected {FACTOR} attempts + 1 evaluator, got {len(requests)} requests")
            window = max(r.answered_at for r in attempts) - min(r.arrived_at for r in attempts)

            windows.append(window)
            spreads.append(max(r.arrived_at for r in attempts) - min(r.arrived_at for r in attempts))
            plain_spans.append(plain_span)
            phase_walls.append(phase_wall)
            ratios.append(window / plain_span)
            phase_ratios.append(phase_wall / plain_wall)

    ratio = summary(ratios, 3)
    finish(
        {
            "benchmark": "soundings",
            "anchor": "one plain pydantic-ai call (server-recorded arrival -> answered)",
            "factor": FACTOR,
            "max_parallel": FACTOR,
            "server_latency_s": LATENCY,
            "repetitions": args.repetitions,
            "ratio_soundings_over_one_call": ratio,
            "soundings_window_s": summary(windows),
            "attempt_arrival_spread_ms": {k: round(v * 1000, 2) for k, v in summary(spreads).items()},
            "plain_call_server_span_s": summary(plain_spans),
            "whole_phase_incl_evaluator_wall_s": summary(phase_walls),
            "ratio_whole_phase_over_one_call_wall": summary(phase_ratios, 3),
            "goal": f"<= {GOAL}",
            "machine": machine(),
        },
        ratio["median"] <= GOAL,
        args.check,
    )


if __name__ == "__main__":
    main()

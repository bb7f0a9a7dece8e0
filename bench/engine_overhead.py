"""(a) Cascade engine overhead: a 5-phase sequential cascade run by ``run_cascade`` against the
same 5 calls written by hand with pydantic-ai, both against one local ScriptedOpenAIServer with a
fixed latency. Result: wall-clock ratio ours/hand (goal <= 1.05).

Each repetition runs both sides ``--runs`` times, interleaved (ours, hand, ours, hand, ...), and
takes the ratio of the two medians; the script reports the median and min of those ratios.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

from _common import arguments, build_model, finish, machine, model_factory, summary

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.testing.openai_server import ScriptedOpenAIServer, text

LATENCY = 0.05
PHASES = 5
GOAL = 1.05
INPUT = {"topic": "the water cycle"}


def respond(request):
    # Deterministic: the same system prompt always gets the same answer, so both sides send
    # byte-identical prompts all along the chain.
    system = request.text_of("system")
    return text(f"Draft {len(system)}: {system[-40:]}")


def instructions(index: int, previous: str | None) -> str:
    if previous is None:
        return f"Step {index}: write a short note about the topic."
    return f"Step {index}: improve this note. {previous}"


CASCADE = load_cascade(
    {
        "cascade_id": "bench_engine_overhead",
        "phases": [
            {
                "name": f"p{i}",
                "instructions": instructions(i, None if i == 1 else f"{{{{ outputs.p{i - 1} }}}}"),
            }
            for i in range(1, PHASES + 1)
        ],
    }
)


def ours(options: RunOptions) -> str:
    result = run_cascade(CASCADE, INPUT, options)
    if result.status != "success":
        raise SystemExit(f"engine run failed: {result.error}")
    return result.final


def hand(model) -> str:
    from pydantic_ai import Agent

    # What the engine sends as the user message when a phase has no context.from: the input.
    prompt = "## Input\n" + json.dumps(INPUT, indent=2, ensure_ascii=False)

    async def chain() -> str:
        previous = None
        for i in range(1, PHASES + 1):
            result = await Agent(model, instructions=instructions(i, previous)).run(prompt)
            previous = result.output
        return previous

    return asyncio.run(chain())


def timed(function, *args) -> tuple[float, str]:
    started = time.perf_counter()
    value = function(*args)
    return time.perf_counter() - started, value


def prompts(server: ScriptedOpenAIServer, since: int) -> list[tuple[str, str]]:
    return [(r.text_of("system"), r.text_of("user")) for r in server.requests[since:]]


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    runs = 5
    with ScriptedOpenAIServer(responder=respond, latency=LATENCY) as server:
        model = build_model(server.base_url)
        options = RunOptions(model_factory=model_factory(model))

        # Warm-up (imports, connection pool, pydantic schema caches), and a check that both
        # sides send exactly the same prompts.
        mark = len(server.requests)
        ours_final = ours(options)
        ours_prompts = prompts(server, mark)
        mark = len(server.requests)
        hand_final = hand(model)
        hand_prompts = prompts(server, mark)
        if ours_prompts != hand_prompts or ours_final != hand_final:
            raise SystemExit("the two sides do not send the same prompts; the comparison is void")

        ratios: list[float] = []
        ours_times: list[float] = []
        hand_times: list[float] = []
        for _ in range(args.repetitions):
            rep_ours: list[float] = []
            rep_hand: list[float] = []
            for _ in range(runs):
                rep_ours.append(timed(ours, options)[0])
                rep_hand.append(timed(hand, model)[0])
            ratios.append(statistics.median(rep_ours) / statistics.median(rep_hand))
            ours_times += rep_ours
            hand_times += rep_hand
        requests = len(server.requests)

    ratio = summary(ratios, 3)
    finish(
        {
            "benchmark": "engine_overhead",
            "anchor": "the same 5 calls written by hand with pydantic-ai (Agent(...).run in sequence)",
            "phases": PHASES,
            "server_latency_s": LATENCY,
            "repetitions": args.repetitions,
            "runs_per_side_per_repetition": runs,
            "ratio_ours_over_hand": ratio,
            "ours_wall_s": summary(ours_times),
            "hand_wall_s": summary(hand_times),
            "overhead_per_run_ms": round(
                (statistics.median(ours_times) - statistics.median(hand_times)) * 1000, 2
            ),
            "requests_served": requests,
            "goal": f"<= {GOAL}",
            "machine": machine(),
        },
        ratio["median"] <= GOAL,
        args.check,
    )


if __name__ == "__main__":
    main()

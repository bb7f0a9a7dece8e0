"""(c) Retry after a failure in phase 4 of 5: a 5-phase cascade whose phase 4 is a Python tool that
fails on the first run (injected failure) and succeeds on the second. Both runs share one
LocalDirectoryCache directory and cache_scope, as a task retry of the same DAG run does. Result:
LLM requests the second run sends for phases that had finished in the first (goal 0).

The second run uses a new LocalDirectoryCache object on the same directory (what a retried task
process would build). Every repetition uses a fresh cache directory and scope.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import arguments, build_model, finish, machine, model_factory, summary

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.cache import LocalDirectoryCache
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.testing.openai_server import ScriptedOpenAIServer, text

LATENCY = 0.05
LLM_PHASES_BEFORE_FAILURE = ("p1", "p2", "p3")

CASCADE = load_cascade(
    {
        "cascade_id": "bench_retry_resume",
        "phases": [
            {"name": "p1", "instructions": "[p1] Outline a report on {{ input.subject }}."},
            {"name": "p2", "instructions": "[p2] Expand this outline: {{ outputs.p1 }}"},
            {"name": "p3", "instructions": "[p3] Edit this draft: {{ outputs.p2 }}"},
            {"name": "p4", "tool": "publish", "inputs": {"report": "{{ outputs.p3 }}"}},
            {"name": "p5", "instructions": "[p5] Announce the report: {{ outputs.p4 }}"},
        ],
    }
)
INPUT = {"subject": "quarterly rainfall"}


def respond(request):
    return text(f"answer to {request.text_of('system')[:30]}")


class FailOnce:
    """The injected failure: the first call raises, like storage that is briefly unavailable."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, report: str) -> dict[str, str]:
        self.calls += 1
        if self.calls == 1:
            raise OSError("injected failure: storage unavailable")
        return {"published": report[:20]}


def phase_of(request) -> str:
    return request.text_of("system")[1:3]


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    repeated: list[int] = []
    first_requests: list[int] = []
    second_requests: list[int] = []
    cache_hits: list[int] = []
    asked: list[list[str]] = []
    second_walls: list[float] = []
    first_walls: list[float] = []
    server = ScriptedOpenAIServer(responder=respond, latency=LATENCY)
    with server, tempfile.TemporaryDirectory() as tmp:
        model = build_model(server.base_url)
        for repetition in range(args.repetitions + 1):  # repetition 0 is the warm-up
            directory = Path(tmp) / f"cache-{repetition}"
            publish = FailOnce()

            scope = f"bench_dag_run_{repetition}"

            def options(
                publish: FailOnce = publish, directory: Path = directory, scope: str = scope
            ) -> RunOptions:
                return RunOptions(
                    model_factory=model_factory(model),
                    tools={"publish": publish},
                    cache=LocalDirectoryCache(directory),
                    cache_scope=scope,
                )

            mark = len(server.requests)
            started = time.perf_counter()
            first = run_cascade(CASCADE, INPUT, options())
            first_wall = time.perf_counter() - started
            if first.status != "failed" or "injected failure" not in (first.error or ""):
                raise SystemExit(f"the first run should fail in p4, got {first.status}: {first.error}")
            first_batch = server.requests[mark:]

            mark = len(server.requests)
            started = time.perf_counter()
            second = run_cascade(CASCADE, INPUT, options())  # the task retry
            second_wall = time.perf_counter() - started
            if second.status != "success":
                raise SystemExit(f"the retry should succeed, got: {second.error}")
            second_batch = server.requests[mark:]
            if second.outputs["p3"] != first.outputs["p3"]:
                raise SystemExit("the retry produced another p3 output than the first run")
            if repetition == 0:
                continue
            asked.append(sorted({phase_of(r) for r in second_batch}))
            repeated.append(sum(phase_of(r) in LLM_PHASES_BEFORE_FAILURE for r in second_batch))
            first_requests.append(len(first_batch))
            second_requests.append(len(second_batch))
            cache_hits.append(second.usage["cache_hits"])
            first_walls.append(first_wall)
            second_walls.append(second_wall)

    finish(
        {
            "benchmark": "retry_resume",
            "anchor": "none (absolute count); a run without the cache would repeat 3 requests",
            "server_latency_s": LATENCY,
            "repetitions": args.repetitions,
            "repeated_llm_requests_for_finished_phases": {"max": max(repeated), "all": repeated},
            "first_run_requests": {"max": max(first_requests), "all": first_requests},
            "second_run_requests": {"max": max(second_requests), "all": second_requests},
            "second_run_asked_phases": asked[0],
            "second_run_cache_hits": {"min": min(cache_hits), "all": cache_hits},
            "first_run_wall_s": summary(first_walls),
            "second_run_wall_s": summary(second_walls),
            "goal": "0 repeated LLM requests",
            "machine": machine(),
        },
        max(repeated) == 0,
        args.check,
    )


if __name__ == "__main__":
    main()

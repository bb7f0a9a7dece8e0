"""Shared helpers of the benchmark scripts: the model construction, statistics, machine facts."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from typing import Any


def build_model(base_url: str, name: str = "gpt-4o-mini") -> Any:
    """The one OpenAIChatModel construction both sides of a comparison use (as tests/cascades)."""
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(base_url=base_url, api_key="sk-bench")
    return OpenAIChatModel(name, provider=provider)


def model_factory(model: Any):
    """A RunOptions.model_factory that hands every model string the same model object."""

    def factory(name: str | None) -> Any:
        return model

    return factory


def summary(values: Sequence[float], digits: int = 4) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def machine() -> dict[str, Any]:
    import airflow
    import pydantic_ai

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "loadavg_1m_at_start": load,
        "python": platform.python_version(),
        "pydantic_ai": pydantic_ai.__version__,
        "airflow": airflow.__version__,
    }


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    parser.add_argument("--repetitions", type=int, default=5)
    return parser.parse_args()


def finish(result: dict[str, Any], met: bool, check: bool) -> None:
    result["goal_met"] = met
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    if check and not met:
        sys.exit(1)

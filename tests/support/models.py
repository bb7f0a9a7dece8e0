"""Model factories for engine tests: every model id the engine asks for points at the scripted
OpenAI-protocol server (real HTTP), named after the id so requests show which model was asked."""

from __future__ import annotations

from typing import Any


def server_models(server: Any, asked: list | None = None):
    """A ``RunOptions.model_factory``; ``asked`` collects every id the engine requested."""
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(base_url=server.base_url, api_key="sk-test")

    def factory(name: str | None):
        if asked is not None:
            asked.append(name)
        return OpenAIChatModel((name or "gpt-4o-mini").split(":")[-1], provider=provider)

    return factory

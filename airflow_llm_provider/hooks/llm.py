"""LLMHook: pydantic-ai models from the ``pydanticai`` connection that common-ai defines.

One connection serves both packages: the same ``pydanticai_default`` that common-ai's operators
read (``password`` = API key, ``host`` = base URL, ``extra.model`` = ``"provider:model"``) is what
our LLM phases use. We resolve it through common-ai's own ``PydanticAIHook`` so both packages
interpret it identically.

pydantic-ai is imported inside methods only: this module is imported while DAGs are parsed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowNotFoundException, BaseHook, conf

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Connection
    from pydantic_ai.models import Model

CONFIG_SECTION = "llm_provider"
DEFAULT_PROVIDER = "openai-chat"
"""Provider of Windlass model ids on a connection that names no model: OpenAI's protocol, which
OpenRouter (Windlass's own backend) and most self-hosted servers speak."""
_NOT_FETCHED = object()
TEST_MODEL = "test"

NO_LLM_WARNING = (
    "No LLM connection %r is configured, so pydantic-ai's offline test model answers instead: its "
    "output is synthetic, not from a language model. To use a real model, create the connection "
    '(e.g. AIRFLOW_CONN_PYDANTICAI_DEFAULT=\'{"conn_type": "pydanticai", "password": "<api key>", '
    '"extra": {"model": "openai:gpt-4o-mini"}}\'), or set [llm_provider] test_model_fallback = False '
    "to fail instead."
)


@dataclass(frozen=True)
class LLMResult:
    """What one prompt returned, with the usage the model reported."""

    output: Any
    model: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    synthetic: bool = False
    messages: list[Any] = field(default_factory=list, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        """A JSON-safe digest for XCom: no prompts, no message history."""
        return {
            "model": self.model,
            "synthetic": self.synthetic,
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


class LLMHook(BaseHook):
    """
    Resolve and call an LLM described by a ``pydanticai`` Airflow connection.

    :param llm_conn_id: connection id; defaults to ``[llm_provider] default_llm_conn_id``
        (``pydanticai_default``, e.g. from ``AIRFLOW_CONN_PYDANTICAI_DEFAULT``).
    :param model: ``"provider:model"`` overriding the connection's ``extra.model``; ``"test"``
        selects pydantic-ai's offline ``TestModel`` explicitly.
    :param timeout: seconds one model request may take before it fails (and is retried by
        the HTTP client where the provider allows).
    """

    conn_name_attr = "llm_conn_id"
    default_conn_name = "pydanticai_default"
    hook_name = "LLM (pydantic-ai connection)"

    def __init__(
        self,
        llm_conn_id: str | None = None,
        model: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.llm_conn_id = llm_conn_id or conf.get(
            CONFIG_SECTION, "default_llm_conn_id", fallback=self.default_conn_name
        )
        self.model_override = model
        self.timeout = timeout
        self._model: Model | None = None
        self._model_name: str | None = None
        self._connection: Any = _NOT_FETCHED  # a Connection, or None if it does not exist
        self.synthetic = False

    def connection(self) -> Connection | None:
        """The LLM connection, fetched once per hook (None when it does not exist). On Airflow 3
        each fetch is a round trip to the API server, which a 1,000-task fan-out feels."""
        if self._connection is _NOT_FETCHED:
            try:
                self._connection = self.get_connection(self.llm_conn_id)
            except AirflowNotFoundException:
                self._connection = None
        return self._connection

    def get_conn(self) -> Model:
        """Return the pydantic-ai ``Model`` (cached for this hook instance)."""
        if self._model is None:
            self._model, self._model_name = self._resolve_model()
        return self._model

    @property
    def model_name(self) -> str:
        self.get_conn()
        return self._model_name or ""

    def describe(self) -> str:
        """One line for logs and the UI saying what answers: a real model or the test model."""
        name = self.model_name
        if self.synthetic:
            return f"{name} (offline test model: synthetic answers, no LLM configured)"
        return f"{name} via connection {self.llm_conn_id!r}"

    def _resolve_model(self) -> tuple[Model, str]:
        if self.model_override == TEST_MODEL:
            return self._test_model(), TEST_MODEL
        connection = self.connection()
        if connection is None:
            if not conf.getboolean(CONFIG_SECTION, "test_model_fallback", fallback=True):
                raise AirflowNotFoundException(
                    f"LLM connection {self.llm_conn_id!r} does not exist. Create it with type "
                    "'pydanticai' (API key in the password, model such as 'openai:gpt-4o-mini' in "
                    "extra.model) or point llm_conn_id at an existing one."
                ) from None
            self.log.warning(NO_LLM_WARNING, self.llm_conn_id)
            self.synthetic = True
            return self._test_model(), TEST_MODEL

        from airflow.providers.common.ai.hooks.pydantic_ai import PydanticAIHook

        # Before the model exists, so even an error while building it is scrubbed.
        register_secrets(connection_secrets(connection))
        delegate = PydanticAIHook(llm_conn_id=self.llm_conn_id, model_id=self.model_override)
        if hasattr(delegate, "_seed_connection"):  # reuse our fetch, not a second one
            delegate._seed_connection(connection)
        model = delegate.get_conn()
        # Keys the connection does not hold itself: fallback connections' keys, a provider's
        # environment variable (OPENAI_API_KEY...) used when the password is empty.
        register_secrets(model_secrets(model))
        if getattr(model, "model_name", None) == TEST_MODEL or type(model).__name__ == "TestModel":
            self.synthetic = True
        name = self.model_override or delegate._get_configured_model_name() or model.model_name
        _set_request_timeout(model, self.timeout or connection.extra_dejson.get("timeout"))
        return model, str(name)

    def model_for(self, model: str | None) -> Model:
        """A model for a cascade phase: ``model`` with this connection's credentials and base URL,
        or the connection's own model when ``None``. This is the cascade engine's model factory.

        ``model`` is a pydantic-ai id (``"openai-chat:gpt-4o"``) or a Windlass/OpenRouter id
        (``"anthropic/claude-sonnet-4"``): the latter is sent as the model name on this
        connection's provider, as Windlass sends it to OpenRouter, unless ``[llm_provider]
        model_map`` maps it to another id first."""
        if model is None or model == self.model_override:
            return self.get_conn()
        model = self.resolve_model_id(model)
        if model == TEST_MODEL:
            return self._test_model()
        cache = self.__dict__.setdefault("_models_by_name", {})
        if model not in cache:
            if self.connection() is None:  # no LLM configured: the announced offline fallback
                cache[model] = self.get_conn()
            else:
                cache[model] = LLMHook(
                    llm_conn_id=self.llm_conn_id, model=model, timeout=self.timeout
                ).get_conn()
        return cache[model]

    def resolve_model_id(self, model: str) -> str:
        """The pydantic-ai id a cascade's model id stands for on this connection (see
        :meth:`model_for`)."""
        from airflow_llm_provider.cascades.models import is_windlass_id

        mapped = model_map().get(model)
        if mapped is None:
            for pattern, target in model_map().items():
                if pattern.endswith("*") and model.startswith(pattern[:-1]):
                    mapped = target
                    break
        if mapped is not None:
            return mapped
        if is_windlass_id(model):
            return f"{self.connection_provider()}:{model}"
        return model

    def connection_provider(self) -> str:
        """The pydantic-ai provider of this connection's model (``openai-chat`` in
        ``openai-chat:gpt-4o``); ``openai-chat`` when the connection names no model."""
        connection = self.connection()
        configured = (connection.extra_dejson.get("model") if connection is not None else None) or ""
        provider, separator, _ = str(configured).partition(":")
        return provider if separator and provider else DEFAULT_PROVIDER

    def declared_price(self) -> Any:
        """The connection's ``extra.price`` ({input_per_mtok, output_per_mtok}) for self-hosted
        models, as a :class:`~airflow_llm_provider.cascades.usage.ModelPrice`; None if absent."""
        from airflow_llm_provider.cascades.usage import ModelPrice

        connection = self.connection()
        return None if connection is None else ModelPrice.from_extra(connection.extra_dejson)

    @staticmethod
    def _test_model() -> Model:
        from pydantic_ai.models.test import TestModel

        return TestModel()

    def run_prompt(
        self,
        prompt: str,
        *,
        instructions: str | None = None,
        output_type: Any = str,
    ) -> LLMResult:
        """Send one prompt (with optional system instructions) and return the answer and usage."""
        from pydantic_ai import Agent
        from pydantic_ai.settings import ModelSettings

        settings = ModelSettings(timeout=self.timeout) if self.timeout else None
        agent = Agent(self.get_conn(), output_type=output_type, instructions=instructions)
        run = agent.run_sync(prompt, model_settings=settings)
        usage = run.usage
        if not hasattr(usage, "requests"):  # a method in older pydantic-ai releases
            usage = usage()
        return LLMResult(
            output=run.output,
            model=self.model_name,
            requests=usage.requests,
            input_tokens=usage.input_tokens or 0,
            output_tokens=usage.output_tokens or 0,
            synthetic=self.synthetic,
            messages=run.all_messages(),
        )

    def test_connection(self) -> tuple[bool, str]:
        """Resolve the model without calling it (no tokens spent)."""
        try:
            self.get_conn()
        except Exception as err:
            from airflow_llm_provider.cascades.redact import redact

            # Shown in the UI's connection form: an error quoting the key must not show it.
            return False, redact(f"{type(err).__name__}: {err}")
        return True, f"Model resolved: {self.describe()}"


SECRET_EXTRA_KEY = re.compile(
    r"api[_-]?key|token|secret|passw|passphrase|private[_-]?key|authorization|credential|keyfile|service_account",
    re.IGNORECASE,
)
"""Extra fields whose values are credentials (``api_key``, ``aws_secret_access_key``,
``headers.Authorization``...): anything below such a key is registered as a secret. Airflow's own
list of sensitive names, so ``auth_type`` or ``aws_access_key_id`` (not secret, and short common
words once registered would be masked everywhere) are left alone."""


def register_secrets(values: Iterable[str]) -> None:
    """Register ``values`` with the engine's scrubber (errors in results, CLI output, Slack) and
    with Airflow's secrets masker (task logs, rendered fields). Both skip trivially short values."""
    from airflow_llm_provider.cascades.redact import MIN_SECRET_LENGTH, register_secret

    for value in values:
        if len(value) < MIN_SECRET_LENGTH:
            continue
        register_secret(value)
        _airflow_mask_secret(value)


def _airflow_mask_secret(value: str) -> None:
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # Airflow 2.x
        from airflow.utils.log.secrets_masker import mask_secret  # type: ignore[no-redef]
    mask_secret(value)


def connection_secrets(connection: Any) -> list[str]:
    """The credentials an LLM connection holds: its password (the API key) and every value below
    a credential-looking key of its extra, at any depth (a key inside ``headers``, for one)."""
    found: list[str] = []
    if getattr(connection, "password", None):
        found.append(str(connection.password))

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, secret or bool(SECRET_EXTRA_KEY.search(str(key))))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, secret)
        elif secret and value not in (None, "") and not isinstance(value, bool):
            found.append(str(value))

    try:
        extra = connection.extra_dejson
    except Exception:  # an unreadable extra is common-ai's error to report, not ours
        extra = {}
    walk(extra, False)
    return found


def model_secrets(model: Any, _depth: int = 0) -> list[str]:
    """API keys held by a built pydantic-ai model's client (``model.client.api_key`` for the OpenAI
    and Anthropic SDKs), through ``FallbackModel.models`` and wrapper models' ``wrapped``."""
    if model is None or _depth > 5:
        return []
    found: list[str] = []
    try:
        key = getattr(getattr(model, "client", None), "api_key", None)
    except Exception:  # a provider whose client property builds something: nothing to read
        key = None
    if isinstance(key, str) and key:
        found.append(key)
    inner_models = getattr(model, "models", None)
    for inner in inner_models if isinstance(inner_models, list | tuple) else []:
        found += model_secrets(inner, _depth + 1)
    wrapped = getattr(model, "wrapped", None)
    if wrapped is not None:
        found += model_secrets(wrapped, _depth + 1)
    return found


def model_map() -> dict[str, str]:
    """``[llm_provider] model_map``: a JSON object of cascade model id -> pydantic-ai id (a key
    ending in ``*`` maps every id with that prefix). Empty when unset; a broken value is an error
    that names the setting."""
    import json

    raw = conf.get(CONFIG_SECTION, "model_map", fallback="") or ""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as err:
        raise ValueError(f"[{CONFIG_SECTION}] model_map is not JSON: {err}") from err
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"[{CONFIG_SECTION}] model_map must be a JSON object of model id -> model id")
    return {str(k): v for k, v in value.items()}


def _set_request_timeout(model: Model, seconds: float | str | None) -> None:
    """Give ``model`` a request timeout: ``seconds`` (the hook's ``timeout``, else the connection's
    ``extra.timeout``), else ``[llm_provider] llm_request_timeout`` (120 s) unless the model has one.
    Without it the OpenAI client waits 600 s per try, 3 tries, for a server that never answers.
    Model-level settings are pydantic-ai's defaults for every request made with the model."""
    from pydantic_ai.settings import ModelSettings

    from airflow_llm_provider.cascades.limits import configured_limits

    settings: ModelSettings = {**(model.settings or {})}
    if seconds:
        settings["timeout"] = float(seconds)
    else:
        settings.setdefault("timeout", configured_limits().llm_request_timeout)
    model._settings = settings  # what Model(settings=...) sets; there is no public setter

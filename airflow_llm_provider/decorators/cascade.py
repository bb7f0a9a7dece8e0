"""``@task.cascade``: a TaskFlow function that returns a cascade's input; the cascade runs on it.

The name is ours alone: common-ai owns ``@task.llm``, ``@task.agent`` and the ``llm_*`` family.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, ClassVar

from airflow.providers.common.compat.sdk import (
    DecoratedOperator,
    TaskDecorator,
    context_merge,
    determine_kwargs,
    task_decorator_factory,
)

from airflow_llm_provider.operators.cascade import CascadeOperator


class _CascadeDecoratedOperator(DecoratedOperator, CascadeOperator):
    """Calls the decorated function for the cascade input, then runs the cascade on it."""

    template_fields: Sequence[str] = (*DecoratedOperator.template_fields, "llm_conn_id", "model")
    template_fields_renderers: ClassVar[dict[str, str]] = {**DecoratedOperator.template_fields_renderers}
    custom_operator_name: str = "@task.cascade"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs)

    def execute(self, context: Any) -> Any:
        context_merge(context, self.op_kwargs)
        kwargs = determine_kwargs(self.python_callable, self.op_args, context)
        inputs = self.python_callable(*self.op_args, **kwargs)
        if not isinstance(inputs, Mapping):
            raise TypeError(
                f"@task.cascade function {self.python_callable.__name__!r} must return the cascade "
                f"input as a dict, not {type(inputs).__name__}"
            )
        # The returned input is data: it is never rendered as a template again.
        self.inputs = dict(inputs)
        return CascadeOperator.execute(self, context)


def cascade_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """
    Run a cascade on the dict the decorated function returns.

    Usage::

        @task.cascade(cascade="cascades/support_triage.yaml", budget={"max_cost_usd": 0.1})
        def triage(ticket: dict) -> dict:
            return {"customer": ticket["name"], "ticket": ticket["text"]}

    Takes every :class:`~airflow_llm_provider.operators.cascade.CascadeOperator` argument but
    ``inputs``.
    """
    return task_decorator_factory(
        python_callable=python_callable,
        decorated_operator_class=_CascadeDecoratedOperator,
        **kwargs,
    )

"""Windlass's voice tools (``say``...) exist only with ElevenLabs/OpenRouter keys; without them
Windlass silently drops them from ``tackle``. We drop them too, with a validate warning, and refuse
a ``tool:`` phase naming one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from airflow_llm_provider.cascades import load_cascade
from airflow_llm_provider.cascades.errors import CascadeValidationError
from airflow_llm_provider.cascades.loader import check_cascade
from airflow_llm_provider.cascades.runner import RunOptions, run_cascade
from airflow_llm_provider.testing.openai_server import text
from tests.support.models import server_models


def write(tmp_path: Path, phases: list[dict]) -> Path:
    path = tmp_path / "voice.yaml"
    path.write_text(yaml.safe_dump({"cascade_id": "voice", "phases": phases}))
    return path


def test_say_in_tackle_is_dropped_with_a_warning(tmp_path, llm_server):
    path = write(tmp_path, [{"name": "speak", "instructions": "Speak.", "tackle": ["say", "set_state"]}])
    checked = check_cascade(path)
    assert checked.cascade is not None
    assert any("`say` is not offered" in str(w) and "voice.yaml:" in str(w) for w in checked.warnings)
    llm_server.script(text("spoken"))
    result = run_cascade(
        checked.cascade, {}, RunOptions(model_factory=server_models(llm_server), base_dir=tmp_path)
    )
    assert result.status == "success", result.error
    assert llm_server.requests[0].tool_names == ["set_state"]


def test_a_tool_phase_naming_say_is_refused(tmp_path):
    path = write(tmp_path, [{"name": "speak", "tool": "say", "inputs": {"text": "hi"}}])
    with pytest.raises(CascadeValidationError) as caught:
        load_cascade(path)
    assert "Windlass built-in tool 'say' cannot run on Airflow" in str(caught.value)

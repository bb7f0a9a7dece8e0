"""The validation cache: unchanged valid files skip re-validation, anything else is validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_llm_provider.cascades import CascadeValidationError, load_cascade
from airflow_llm_provider.cascades.loader import check_cascade

REPO = Path(__file__).resolve().parents[2]
VALID = sorted((REPO / "tests" / "cascades" / "fixtures" / "valid").glob("*.*")) + sorted(
    (REPO / "dags" / "cascades").glob("*.yaml")
)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_LLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("AIRFLOW_LLM_VALIDATION_CACHE", raising=False)
    return tmp_path / "cache" / "validated"


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_a_cached_cascade_equals_the_validated_one(path, cache_dir):
    first = load_cascade(path)  # validates and stores
    assert len(list(cache_dir.glob("*.json"))) == 1
    second = load_cascade(path)  # from the cache
    assert second == first == check_cascade(path).cascade


def test_a_changed_file_is_validated_again(cache_dir, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cascade_id: c\nphases:\n  - name: a\n    instructions: hi\n")
    load_cascade(path)
    path.write_text("cascade_id: c\nphases:\n  - name: a\n    instrucions: hi\n")
    with pytest.raises(CascadeValidationError, match=r"c\.yaml:4: phases\[0\]\.instrucions: unknown key"):
        load_cascade(path)


def test_invalid_files_are_never_cached(cache_dir, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("cascade_id: c\nphases: []\n")
    for _ in range(2):
        with pytest.raises(CascadeValidationError):
            load_cascade(path)
    assert not cache_dir.exists() or list(cache_dir.glob("*.json")) == []


def test_a_corrupt_entry_is_a_miss(cache_dir, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cascade_id: c\nphases:\n  - name: a\n    instructions: hi\n")
    load_cascade(path)
    (entry,) = cache_dir.glob("*.json")
    entry.write_text("{not json")
    assert load_cascade(path).cascade_id == "c"


def test_the_cache_can_be_switched_off(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_LLM_VALIDATION_CACHE", "off")
    path = tmp_path / "c.yaml"
    path.write_text("cascade_id: c\nphases:\n  - name: a\n    instructions: hi\n")
    load_cascade(path)
    assert not cache_dir.exists()

"""docs/cascades.md's Windlass compatibility table stays complete and true: every key of the
Windlass models has a row, and a row says "refused" exactly when validation refuses the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from airflow_llm_provider.cascades import spec
from airflow_llm_provider.cascades.refused import REFUSED, WARNED

DOC = Path(__file__).resolve().parents[1] / "docs" / "cascades.md"
PREFIXES = {
    "Cascade": "",
    "Phase": "phases[].",
    "Rules": "phases[].rules.",
    "Soundings": "phases[].soundings.",
    "Wards": "phases[].wards.",
    "ContextSpec": "phases[].context.",
}


def _rows() -> dict[str, str]:
    """Documented key path -> the "Here" cell."""
    text = DOC.read_text()
    table = text[text.index("## Windlass compatibility") : text.index("### Model ids")]
    rows: dict[str, str] = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith(("`", "**")):
            continue
        prefix = ""
        for token in re.findall(r"`([^`]+)`", cells[0]):
            key = token.split(":")[0].strip()
            if "." in key:
                prefix, _, key = key.rpartition(".")
                prefix += "."
            elif key.startswith("phases[]"):
                prefix = ""
            rows.setdefault(prefix + key, cells[1])
            if ":" in token:  # a value-level row, e.g. `phases[].tackle: manifest`
                rows[token.replace(" ", "")] = cells[1]
    return rows


def _documented(path: str, rows: dict[str, str]) -> bool:
    """A row for the key itself, or rows for its parts (``phases[].rules`` has ``phases[].rules.*``)."""
    return path in rows or any(row.startswith(path + ".") for row in rows)


@pytest.mark.parametrize("model_name", sorted(PREFIXES))
def test_every_windlass_key_has_a_row(model_name):
    model = getattr(spec, model_name)
    rows = _rows()
    keys = {info.alias or name for name, info in model.model_fields.items()}
    keys |= set(REFUSED.get(model_name, {})) | set(WARNED.get(model_name, {}))
    missing = sorted(
        PREFIXES[model_name] + key for key in keys if not _documented(PREFIXES[model_name] + key, rows)
    )
    assert not missing, f"docs/cascades.md has no compatibility row for {missing}"


@pytest.mark.parametrize("model_name", sorted(PREFIXES))
def test_a_row_says_refused_exactly_when_validation_refuses(model_name):
    model = getattr(spec, model_name)
    rows = _rows()
    refused = set(REFUSED.get(model_name, {}))
    for key in {info.alias or name for name, info in model.model_fields.items()} | refused:
        if PREFIXES[model_name] + key not in rows:
            continue  # a container such as `rules`: its parts have rows
        status = rows[PREFIXES[model_name] + key]
        assert status.startswith("refused") == (key in refused), (model_name, key, status)
        if key in WARNED.get(model_name, {}):
            assert status.startswith("ignored"), (model_name, key, status)


def test_cascades_doc_lists_every_windlass_tool_with_its_true_status():
    """docs/cascades.md has a row for each of Windlass's built-in tools, and a row says
    "supported" exactly when the engine has the tool (refused or dropped otherwise)."""
    from airflow_llm_provider.cascades.references import WINDLASS_BUILTIN_TOOLS
    from airflow_llm_provider.cascades.refused import REFUSED_TOOLS, UNREGISTERED_TOOLS
    from airflow_llm_provider.cascades.tools.builtin import builtin_names

    rows = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            names, status = line.split(" | ")[0], line.split(" | ")[1]
            for name in names.strip("| ").split(", "):
                rows[name.strip("`")] = status
    assert len(WINDLASS_BUILTIN_TOOLS) == 57
    assert set(rows) >= WINDLASS_BUILTIN_TOOLS, sorted(WINDLASS_BUILTIN_TOOLS - set(rows))
    for name in WINDLASS_BUILTIN_TOOLS:
        supported = name in builtin_names() or name == "route_to"
        assert rows[name].startswith(("supported", "only with")) == supported, (name, rows[name])
        if not supported:
            assert name in REFUSED_TOOLS or name in UNREGISTERED_TOOLS, name

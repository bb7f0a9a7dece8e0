"""Phase cache: keys, the local directory backend and PostgreSQL (the real ``postgres`` fixture)."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_llm_provider.cascades.cache import (
    CachedPhase,
    CacheUnavailable,
    LocalDirectoryCache,
    PostgresCache,
    cache_key,
    canonical_json,
    content_hash,
    open_cache,
)

KEY_PARTS: dict[str, Any] = {
    "scope": "manual__2026-03-04T00:00:00+00:00",
    "cascade_hash": "c" * 64,
    "phase": "summarise",
    "rendered_inputs": {"text": "hello", "n": 3, "tags": ["a", "b"]},
    "model": "openai:gpt-4o-mini",
}


def _entry(output=None, *, age: float = 0.0, model: str | None = "openai:gpt-4o-mini") -> CachedPhase:
    return CachedPhase(
        output={"summary": "short", "points": [1, 2.5, None, True]} if output is None else output,
        model=model,
        usage={"input_tokens": 120, "output_tokens": 30, "cost_usd": 0.000036},
        created_at=time.time() - age,
    )


# -- keys --------------------------------------------------------------------------------------


def test_canonical_json_is_order_independent_and_handles_dates():
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == '{"a":[1,{"c":3,"d":2}],"b":1}'
    assert canonical_json({"when": date(2026, 3, 4)}) == '{"when":"2026-03-04"}'
    assert canonical_json(datetime(2026, 3, 4, 5, 6)) == '"2026-03-04 05:06:00"'
    assert content_hash({"b": 1, "a": 2}) == content_hash({"a": 2, "b": 1})
    assert len(content_hash("x")) == 64
    assert content_hash("x") != content_hash("y")


def test_cache_key_changes_with_every_part():
    base = cache_key(**KEY_PARTS)
    assert len(base) == 64
    assert int(base, 16) >= 0
    changes = {
        "scope": "shared",
        "cascade_hash": "d" * 64,
        "phase": "summarise2",
        "rendered_inputs": {"text": "hello!", "n": 3, "tags": ["a", "b"]},
        "model": "anthropic:claude-3-5-haiku-latest",
    }
    keys = {base}
    for part, value in changes.items():
        key = cache_key(**{**KEY_PARTS, part: value})
        assert key != base, part
        keys.add(key)
    assert len(keys) == 6
    assert cache_key(**{**KEY_PARTS, "model": None}) != base
    assert (
        cache_key(**{**KEY_PARTS, "rendered_inputs": {"tags": ["b", "a"], "n": 3, "text": "hello"}}) != base
    )


def test_cache_key_ignores_dict_order():
    reordered = {"tags": ["a", "b"], "n": 3, "text": "hello"}
    assert cache_key(**{**KEY_PARTS, "rendered_inputs": reordered}) == cache_key(**KEY_PARTS)


def test_cache_key_parts_do_not_bleed_into_each_other():
    one = cache_key(scope="a:b", cascade_hash="c", phase="p", rendered_inputs=None, model=None)
    two = cache_key(scope="a", cascade_hash="b:c", phase="p", rendered_inputs=None, model=None)
    assert one != two


# -- local directory ---------------------------------------------------------------------------


def test_local_round_trip_and_layout(tmp_path):
    cache = LocalDirectoryCache(tmp_path / "new" / "dir")
    key = cache_key(**KEY_PARTS)
    entry = _entry()
    assert cache.get(key) is None
    cache.put(key, entry)
    assert cache.get(key) == entry
    path = tmp_path / "new" / "dir" / key[:2] / f"{key}.json"
    assert path.is_file()
    assert json.loads(path.read_text())["output"] == entry.output
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left over
    # A fresh instance on the same directory (another task process) sees it.
    assert LocalDirectoryCache(tmp_path / "new" / "dir").get(key) == entry


def test_local_miss_and_other_keys(tmp_path):
    cache = LocalDirectoryCache(tmp_path)
    cache.put(cache_key(**KEY_PARTS), _entry())
    assert cache.get(cache_key(**{**KEY_PARTS, "phase": "other"})) is None


def test_local_plain_string_outputs_and_odd_keys_stay_inside_root(tmp_path):
    cache = LocalDirectoryCache(tmp_path / "root")
    cache.put("../../escape", _entry("plain text", model=None))
    got = cache.get("../../escape")
    assert got is not None
    assert (got.output, got.model) == ("plain text", None)
    assert not (tmp_path / "escape.json").exists()
    assert all(p.is_relative_to(tmp_path / "root") for p in tmp_path.rglob("*.json"))


def test_local_max_age(tmp_path):
    cache = LocalDirectoryCache(tmp_path)
    cache.put("aa" * 32, _entry(age=3600))
    assert cache.get("aa" * 32) is not None
    assert cache.get("aa" * 32, max_age_seconds=7200) is not None
    assert cache.get("aa" * 32, max_age_seconds=60) is None
    cache.put("bb" * 32, _entry(age=0))
    assert cache.get("bb" * 32, max_age_seconds=60) is not None


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[1, 2]",
        '{"key": "KEY", "output": 1}',
        '{"key": "KEY", "output": 1, "model": null, "usage": [], "created_at": 1.0}',
        '{"key": "KEY", "output": 1, "model": null, "usage": {}, "created_at": "yesterday"}',
        '{"key": "someone-else", "output": 1, "model": null, "usage": {}, "created_at": 1.0}',
    ],
)
def test_local_corrupt_file_is_a_logged_miss(tmp_path, caplog, content):
    cache = LocalDirectoryCache(tmp_path)
    key = cache_key(**KEY_PARTS)
    path = cache.path_for(key)
    path.parent.mkdir(parents=True)
    path.write_text(content.replace("KEY", key))
    with caplog.at_level(logging.WARNING, logger="airflow_llm_provider.cascades.cache"):
        assert cache.get(key) is None
    assert any("corrupt" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    # The next put repairs it.
    cache.put(key, _entry())
    assert cache.get(key) == cache.get(key) is not None


def test_local_unreadable_file_is_a_miss(tmp_path, caplog):
    cache = LocalDirectoryCache(tmp_path)
    key = cache_key(**KEY_PARTS)
    cache.path_for(key).mkdir(parents=True)  # a directory where the file should be
    with caplog.at_level(logging.WARNING):
        assert cache.get(key) is None
    assert "unreadable" in caplog.text


def test_local_concurrent_writers_leave_a_valid_file(tmp_path):
    cache = LocalDirectoryCache(tmp_path)
    key = cache_key(**KEY_PARTS)
    writers, rounds = 12, 25
    start = threading.Barrier(writers + 1)
    errors: list[BaseException] = []
    seen: list[CachedPhase | None] = []

    def write(n: int) -> None:
        try:
            start.wait()
            for i in range(rounds):
                cache.put(key, _entry({"writer": n, "round": i, "pad": "x" * 20_000}))
        except BaseException as err:
            errors.append(err)

    def read() -> None:
        start.wait()
        for _ in range(writers * rounds):
            seen.append(cache.get(key))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    threads.append(threading.Thread(target=read))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    final = cache.get(key)
    assert final is not None
    assert final.output["round"] == rounds - 1
    assert final.output["writer"] in range(writers)
    # A reader never saw a half-written file: every hit is a whole entry.
    assert all(entry is None or len(entry.output["pad"]) == 20_000 for entry in seen)
    assert [p.name for p in cache.path_for(key).parent.iterdir()] == [f"{key}.json"]


def test_local_rejects_unserialisable_output(tmp_path):
    cache = LocalDirectoryCache(tmp_path)
    with pytest.raises(TypeError, match="JSON-serialisable"):
        cache.put("k", _entry({"obj": object()}))
    assert cache.get("k") is None


# -- PostgreSQL --------------------------------------------------------------------------------


def test_postgres_round_trip_creates_its_table(postgres):
    cache = PostgresCache(postgres.uri)
    key = cache_key(**KEY_PARTS)
    assert cache.get(key) is None
    entry = _entry()
    cache.put(key, entry)
    assert cache.get(key) == entry
    cache.put("plain", _entry("just text", model=None))
    got = cache.get("plain")
    assert got is not None
    assert (got.output, got.model) == ("just text", None)
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), pg_typeof(max(output::text)::jsonb)::text FROM llm_phase_cache")
        assert cur.fetchone() == (2, "jsonb")
    cache.close()


def test_postgres_upsert_overwrites(postgres):
    cache = PostgresCache(postgres.uri, table="phase_cache_2")
    cache.put("k", _entry({"v": 1}, age=100))
    cache.put("k", _entry({"v": 2}))
    got = cache.get("k")
    assert got is not None
    assert got.output == {"v": 2}
    assert got.created_at == pytest.approx(time.time(), abs=60)
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM phase_cache_2")
        assert cur.fetchone() == (1,)


def test_postgres_max_age(postgres):
    cache = PostgresCache(postgres.uri)
    cache.put("old", _entry(age=3600))
    cache.put("new", _entry())
    assert cache.get("old") is not None
    assert cache.get("old", max_age_seconds=60) is None
    assert cache.get("old", max_age_seconds=7200) is not None
    assert cache.get("new", max_age_seconds=60) is not None


def test_postgres_instances_share_entries_like_separate_machines(postgres):
    first = PostgresCache(postgres.uri)
    second = PostgresCache(postgres.sqlalchemy_uri)  # as another worker would configure it
    first.put("shared-key", _entry({"from": "first"}))
    got = second.get("shared-key")
    assert got is not None
    assert got.output == {"from": "first"}
    second.put("shared-key", _entry({"from": "second"}))
    got = first.get("shared-key")
    assert got is not None
    assert got.output == {"from": "second"}


def test_postgres_reconnects_after_the_connection_drops(postgres):
    cache = PostgresCache(postgres.uri)
    cache.put("k", _entry({"v": 1}))
    with postgres.connect() as admin:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
    got = cache.get("k")
    assert got is not None
    assert got.output == {"v": 1}


@pytest.mark.parametrize("table", ["x; DROP TABLE users", 'cache"', "1cache", "public.cache", "", "a" * 64])
def test_postgres_rejects_non_identifier_tables(table):
    with pytest.raises(ValueError, match="not a plain identifier"):
        PostgresCache("postgresql://u@127.0.0.1/db", table=table)


def test_postgres_unreachable_is_cache_unavailable_without_password():
    cache = PostgresCache("postgresql://cacheuser:s3cret-pw@127.0.0.1:1/phasesdb", connect_timeout=3)
    with pytest.raises(CacheUnavailable) as err:
        cache.get("k")
    message = str(err.value)
    assert "127.0.0.1:1/phasesdb" in message
    assert "s3cret-pw" not in message
    assert "s3cret-pw" not in repr(cache)
    with pytest.raises(CacheUnavailable):
        cache.put("k", _entry())


def test_postgres_invalid_dsn_does_not_echo_it():
    with pytest.raises(ValueError, match="invalid PostgreSQL DSN") as err:
        PostgresCache("postgresql://u:topsecret@host:notaport/db?bogus_option=1")
    assert "topsecret" not in str(err.value)


# -- open_cache --------------------------------------------------------------------------------


def test_open_cache_off():
    assert open_cache(None) is None
    assert open_cache("off") is None
    assert open_cache(" OFF ") is None


def test_open_cache_local_and_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_LLM_CACHE_DIR", str(tmp_path / "from-env"))
    local = open_cache("local")
    assert isinstance(local, LocalDirectoryCache)
    assert local.root == tmp_path / "from-env"
    assert (tmp_path / "from-env").is_dir()

    monkeypatch.delenv("AIRFLOW_LLM_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = open_cache("local")
    assert isinstance(default, LocalDirectoryCache)
    assert default.root == tmp_path / "home" / ".cache" / "airflow-llm-provider" / "phases"

    explicit = open_cache(f"dir:{tmp_path / 'explicit'}")
    assert isinstance(explicit, LocalDirectoryCache)
    assert explicit.root == Path(tmp_path / "explicit")
    explicit.put("k", _entry())
    assert explicit.get("k") is not None


def test_open_cache_postgres_uri_forms(postgres):
    for uri in (
        postgres.uri,
        postgres.uri.replace("postgresql://", "postgres://", 1),
        postgres.sqlalchemy_uri,
    ):
        cache = open_cache(uri)
        assert isinstance(cache, PostgresCache)
        cache.put("k", _entry({"uri": uri}))
        got = cache.get("k")
        assert got is not None
        assert got.output == {"uri": uri}


def test_open_cache_airflow_connection(postgres, airflow_conn):
    airflow_conn("pg_cache", postgres.airflow_connection())
    cache = open_cache("conn:pg_cache")
    assert isinstance(cache, PostgresCache)
    cache.put("k", _entry({"via": "connection"}))
    # The entry landed in the fixture's database.
    assert PostgresCache(postgres.uri).get("k") == cache.get("k") is not None
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT output FROM llm_phase_cache WHERE key = 'k'")
        assert cur.fetchone() == ({"via": "connection"},)


@pytest.mark.parametrize("spec", ["redis://h", "dir:", "conn:", "yes", "", "mysql://user:pw123@h/db"])
def test_open_cache_rejects_other_forms(spec):
    with pytest.raises(ValueError, match="accepted forms") as err:
        open_cache(spec)
    assert "dir:/path" in str(err.value)
    assert "conn:<" in str(err.value)
    assert "pw123" not in str(err.value)

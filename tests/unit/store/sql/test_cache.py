"""store/sql/cache.py: when a unit of work may use the read cache's answers."""

from __future__ import annotations

from iotdps.store.sql.cache import CACHED_TABLES, ReadCache


def test_a_unit_that_sees_the_same_version_shares_the_answers() -> None:
    cache = ReadCache(concurrent=False)
    first = cache.for_version(7)
    assert first is not None
    first[("settings",)] = "answer"
    assert cache.for_version(7) is first


def test_a_new_version_starts_empty_and_none_reads_through() -> None:
    cache = ReadCache(concurrent=False)
    old = cache.for_version(1)
    assert old is not None
    old[("hubs",)] = "stale"
    # SQLite's data_version may go either way; any other version is a new cache.
    assert cache.for_version(0) == {}
    assert cache.for_version(None) is None  # no version row: nothing to trust


def test_postgresql_units_that_see_an_older_version_read_through() -> None:
    cache = ReadCache(concurrent=True)
    newer = cache.for_version(5)
    assert newer is not None
    newer[("cas",)] = "v5"
    assert cache.for_version(4) is None  # a transaction that began before the last bump
    assert cache.for_version(5) == {("cas",): "v5"}  # the newer cache survives it
    assert cache.for_version(6) == {}


def test_drop_forgets_every_answer() -> None:
    cache = ReadCache(concurrent=True)
    answers = cache.for_version(3)
    assert answers is not None
    answers[("settings",)] = "x"
    cache.drop()
    assert cache.for_version(3) == {}
    # After a drop any version is accepted again, an older one too.
    cache.drop()
    assert cache.for_version(1) == {}


def test_the_cached_tables_are_the_configuration_an_operator_changes() -> None:
    assert CACHED_TABLES == {
        "service_settings",
        "linked_hubs",
        "ca_certificates",
        "enrollment_groups",
        "individual_enrollments",
    }

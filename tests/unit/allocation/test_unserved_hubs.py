"""Linked hubs whose serving lease ran out are skipped by allocation, loudly when nothing is left."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from iotdps.allocation.hubs import LinkedHub
from iotdps.allocation.policy import allocate_builtin, candidate_hubs, choose_static
from iotdps.cli.hub_serving import served_text
from iotdps.enrollment.models import EnrollmentSettings
from iotdps.refusals import RefusalReason, Refused

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def test_a_hub_is_unserved_only_once_its_lease_has_run_out() -> None:
    assert not LinkedHub("a.local").unserved(NOW)  # never served by a node: unknown, not skipped
    assert not LinkedHub("a.local", served_until=NOW + timedelta(seconds=1)).unserved(NOW)
    assert LinkedHub("a.local", served_until=NOW).unserved(NOW)


def test_unserved_hubs_are_skipped() -> None:
    linked = [LinkedHub("a.local"), LinkedHub("b.local"), LinkedHub("c.local")]
    gone = frozenset({"b.local"})
    assert [h.host_name for h in candidate_hubs(EnrollmentSettings(), linked, gone)] == ["a.local", "c.local"]
    chosen = {allocate_builtin("hashed", f"d{i}", EnrollmentSettings(), linked, gone).host_name for i in range(200)}
    assert chosen == {"a.local", "c.local"}


def test_nothing_served_is_a_refusal_that_says_so() -> None:
    linked = [LinkedHub("a.local"), LinkedHub("b.local", apply_allocation_policy=False)]
    with pytest.raises(Refused) as err:
        candidate_hubs(EnrollmentSettings(), linked, frozenset({"a.local"}))
    assert err.value.reason is RefusalReason.NO_HUB
    assert "no running iotdps node serves hub a.local" in err.value.message
    # Static allocation names its hub: no fallback, the same refusal.
    with pytest.raises(Refused) as err:
        choose_static(EnrollmentSettings(iot_hubs=("a.local",)), linked, frozenset({"a.local"}))
    assert "no running iotdps node serves hub a.local" in err.value.message
    with pytest.raises(Refused):
        choose_static(EnrollmentSettings(), linked[:1], frozenset({"a.local"}))


def test_the_served_column() -> None:
    assert served_text(LinkedHub("a.local"), NOW) == "never: no node serves it"
    assert served_text(LinkedHub("a.local", served_until=NOW + timedelta(seconds=30)), NOW).startswith("yes")
    assert served_text(LinkedHub("a.local", served_until=NOW), NOW).startswith("NO, since 2026-12-07T12:00:00")
    # Which nodes serve it: those whose own lease is live (a killed node's runs out).
    leases = (("node-a", NOW - timedelta(seconds=1)), ("node-b", NOW + timedelta(seconds=30)))
    text = served_text(LinkedHub("a.local", served_until=NOW + timedelta(seconds=30), served_by=leases), NOW)
    assert text == "yes (by node-b; lease until 2026-12-07T12:00:30.0000000Z)"


def test_the_lease_and_the_implicit_mark_round_trip_through_json() -> None:
    from iotdps.store._records import hub_from_doc, hub_to_doc

    hub = LinkedHub("a.local", 2, True, "west", served_until=NOW, implicit=True)
    doc = hub_to_doc(hub)
    assert doc["implicit"] is True and doc["servedUntil"].startswith("2026-12-07T12:00:00")
    assert hub_from_doc(doc) == hub
    assert "implicit" not in hub_to_doc(LinkedHub("b.local")) and "servedUntil" not in hub_to_doc(LinkedHub("b.local"))


def test_the_per_node_leases_round_trip_through_json() -> None:
    from iotdps.store._records import hub_from_doc, hub_to_doc

    leases = (("node-a", NOW), ("node-b", NOW + timedelta(seconds=60)))
    hub = LinkedHub("a.local", served_until=NOW + timedelta(seconds=60), served_by=leases)
    doc = hub_to_doc(hub)
    assert doc["servedBy"] == {"node-a": "2026-12-07T12:00:00.0000000Z", "node-b": "2026-12-07T12:01:00.0000000Z"}
    assert hub_from_doc(doc) == hub
    # A hub written before the per-node leases has none; what is not a time is not a lease.
    assert hub_from_doc({"name": "a.local", "servedUntil": "2026-12-07T12:00:00Z"}).served_by == ()
    assert hub_from_doc({"name": "a.local", "servedBy": {"n": 5, "m": "2026-12-07T12:00:00Z"}}).served_by == (
        ("m", NOW),
    )
    assert "servedBy" not in hub_to_doc(LinkedHub("b.local"))

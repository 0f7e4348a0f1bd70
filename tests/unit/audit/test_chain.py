"""The chain's rules on their own: what verify_chain says about a log changed, cut or shuffled."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from iotdps.audit import GENESIS, Actor, AuditDraft, AuditEntry, AuditQuery, check_action, link, verify_chain
from iotdps.audit.actions import PRUNED, check_action_filter
from iotdps.audit.digest import record_digest
from iotdps.errors import InvalidInput

T0 = datetime(2027, 1, 1, tzinfo=UTC)
ALICE = Actor("policy", "provisioningserviceowner")


def _log(n: int) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        draft = AuditDraft(ALICE, "enrollment.create", f"enrollment/dev-{seq}", None, f"sha256:{seq:064x}")
        entry = link(draft, seq=seq, at=T0 + timedelta(seconds=seq), prev=prev)
        entries.append(entry)
        prev = entry.hash
    return entries


def _kinds(entries: list[AuditEntry]) -> list[tuple[str, int]]:
    return [(p.kind, p.seq) for p in verify_chain(entries).problems]


def test_an_untouched_log_verifies_and_reports_its_head() -> None:
    entries = _log(5)
    summary = verify_chain(entries)
    assert summary.problems == ()
    assert (summary.entries, summary.head_seq, summary.head_hash) == (5, 5, entries[-1].hash)


def test_a_changed_field_is_named() -> None:
    entries = _log(5)
    entries[2] = replace(entries[2], actor="policy:someoneelse")
    assert _kinds(entries) == [("changed", 3)]


def test_a_rewritten_hash_breaks_the_next_link() -> None:
    entries = _log(5)
    forged = replace(entries[2], target="enrollment/other")
    forged = replace(
        forged,
        hash=link(
            AuditDraft(ALICE, forged.action, forged.target, forged.before, forged.after),
            seq=3,
            at=forged.at,
            prev=forged.prev,
        ).hash,
    )
    assert _kinds([*entries[:2], forged, *entries[3:]]) == [("changed", 3)]


def test_a_deleted_entry_is_named() -> None:
    entries = _log(5)
    del entries[2]
    summary = verify_chain(entries)
    assert [(p.kind, p.seq) for p in summary.problems] == [("deleted", 3)]
    assert "entry 3 was deleted" in str(summary.problems[0])


def test_deleted_oldest_entries_without_a_prune_record_are_named() -> None:
    assert _kinds(_log(5)[2:]) == [("deleted", 3)]


def test_swapped_entries_read_as_out_of_order() -> None:
    entries = _log(5)
    # The seq column swapped: the rows come back in the other order.
    a, b = entries[1], entries[2]
    entries[1], entries[2] = replace(b, seq=2), replace(a, seq=3)
    kinds = _kinds(entries)
    assert kinds and {k for k, _ in kinds} == {"reordered"}
    assert {s for _, s in kinds} >= {2, 3}


def test_a_recorded_prune_keeps_the_chain_verifiable() -> None:
    entries = _log(5)
    kept = entries[3:]
    last = entries[2]
    anchor = link(
        AuditDraft(Actor("local", "ops"), PRUNED, "audit", detail={"throughSeq": last.seq, "throughHash": last.hash}),
        seq=6,
        at=T0 + timedelta(seconds=6),
        prev=kept[-1].hash,
    )
    assert verify_chain([*kept, anchor]).problems == ()
    # The anchor is in the chain: change what it claims and it no longer vouches for the cut.
    lying = replace(anchor, detail=anchor.detail.replace(f'"throughSeq":{last.seq}', '"throughSeq":1'))
    assert _kinds([*kept, lying]) == [("deleted", 4), ("changed", 6)]


def test_actions_are_an_open_list_of_well_formed_names() -> None:
    assert check_action("revocation.add") == "revocation.add"  # a later feature's name
    assert check_action("ca.verification-code") == "ca.verification-code"
    for bad in ("Enrollment.Create", "enrollment", "a.b%", "x.", ".x", "enrollment.create; drop", "a." + "b" * 80):
        with pytest.raises(InvalidInput):
            check_action(bad)
    assert check_action_filter("enrollment") == "enrollment"
    with pytest.raises(InvalidInput):
        check_action_filter("enroll_%")


def test_actors_and_queries_validate_their_input() -> None:
    assert str(Actor.parse("console:owner")) == "console:owner"
    for bad in ("owner", "root:x", "local:", "local:a\nb"):
        with pytest.raises(InvalidInput):
            Actor.parse(bad)
    with pytest.raises(InvalidInput):
        AuditQuery(limit=0)
    with pytest.raises(InvalidInput):
        AuditQuery(after=-1)
    with pytest.raises(InvalidInput):
        AuditDraft(ALICE, "hub.link", "")
    with pytest.raises(InvalidInput):
        AuditDraft(ALICE, "hub.link", "hub/x", detail={"n": float("nan")})


def test_entries_round_trip_through_json_and_digests_are_stable() -> None:
    entry = _log(1)[0]
    again = AuditEntry.from_json(entry.to_json())
    assert again == entry
    assert verify_chain([again]).problems == ()
    with pytest.raises(InvalidInput):
        AuditEntry.from_json({"seq": "x"})
    assert record_digest(None) is None
    assert record_digest(ALICE) == record_digest(Actor("policy", "provisioningserviceowner"))
    assert record_digest(ALICE) != record_digest(Actor("policy", "other"))

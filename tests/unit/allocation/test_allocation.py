"""Allocation: weighted hashing distribution and stability, static, candidates, custom webhook."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from iotdps.allocation.custom import parse_response
from iotdps.allocation.geo import choose_geo
from iotdps.allocation.hashed import choose_hashed
from iotdps.allocation.hubs import LinkedHub
from iotdps.allocation.policy import allocate_builtin, candidate_hubs, choose_static
from iotdps.enrollment.models import (
    EnrollmentSettings,
)
from iotdps.refusals import RefusalReason, Refused

IDS = [f"device-{i:05d}" for i in range(10_000)]


@pytest.mark.parametrize("weights", [(1, 1, 1), (1, 2, 7), (10, 300, 1000)])
def test_distribution_within_five_percent_of_weights(weights: tuple[int, ...]) -> None:
    hubs = [LinkedHub(f"hub-{i}.local", w) for i, w in enumerate(weights)]
    counts = Counter(choose_hashed(rid, hubs).host_name for rid in IDS)
    total = sum(weights)
    for hub in hubs:
        expected = len(IDS) * hub.allocation_weight / total
        # Relative error per hub; the ids are fixed, so this is deterministic, not flaky.
        assert abs(counts[hub.host_name] - expected) <= 0.05 * expected, (hub, counts)


def test_hashing_is_deterministic_case_insensitive_and_moves_few_devices() -> None:
    hubs = [LinkedHub(f"hub-{i}.local") for i in range(3)]
    before = {rid: choose_hashed(rid, hubs).host_name for rid in IDS[:3000]}
    assert before == {rid: choose_hashed(rid.upper(), list(reversed(hubs))).host_name for rid in IDS[:3000]}
    after = {rid: choose_hashed(rid, [*hubs, LinkedHub("hub-3.local")]).host_name for rid in IDS[:3000]}
    moved = [rid for rid in before if before[rid] != after[rid]]
    assert all(after[rid] == "hub-3.local" for rid in moved)  # only devices for the new hub move
    assert 0.18 < len(moved) / 3000 < 0.32
    assert choose_geo("x", hubs) == choose_hashed("x", hubs)


def test_candidates_and_static() -> None:
    linked = [LinkedHub("a.local"), LinkedHub("b.local", apply_allocation_policy=False), LinkedHub("c.local")]
    assert [h.host_name for h in candidate_hubs(EnrollmentSettings(), linked)] == ["a.local", "c.local"]
    assert [h.host_name for h in candidate_hubs(EnrollmentSettings(iot_hubs=("C.local",)), linked)] == ["c.local"]
    with pytest.raises(Refused) as err:
        candidate_hubs(EnrollmentSettings(iot_hubs=("zzz.local",)), linked)
    assert err.value.reason is RefusalReason.HUB_NOT_LINKED
    with pytest.raises(Refused) as err:
        candidate_hubs(EnrollmentSettings(iot_hubs=("b.local",)), linked)
    assert err.value.reason is RefusalReason.NO_HUB
    assert choose_static(EnrollmentSettings(iot_hub_host_name="b.local"), linked).host_name == "b.local"
    assert choose_static(EnrollmentSettings(), linked[:1]).host_name == "a.local"
    for settings in (EnrollmentSettings(), EnrollmentSettings(iot_hubs=("a.local", "c.local"))):
        with pytest.raises(Refused) as err:
            choose_static(settings, linked)
        assert err.value.reason is RefusalReason.NO_HUB
    assert allocate_builtin("static", "d", EnrollmentSettings(iot_hubs=("c.local",)), linked).host_name == "c.local"


@pytest.mark.parametrize(
    ("status", "body", "words"),
    [
        (404, None, "answered HTTP 404"),
        (200, None, "did not answer a JSON object"),
        (200, {"payload": 1}, "no iotHubHostName"),
        (200, {"iotHubHostName": "evil.local"}, "not one of the hubs offered"),
        (200, {"iotHubHostName": "a.local", "initialTwin": "x"}, "bad initialTwin"),
    ],
)
def test_bad_webhook_answers(status: int, body: Any, words: str) -> None:
    with pytest.raises(Refused) as err:
        parse_response(status, body, ["a.local"], "hook.example")
    assert err.value.reason is RefusalReason.WEBHOOK_FAILED and words in err.value.message

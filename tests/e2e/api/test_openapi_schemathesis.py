"""The OpenAPI document at /openapi.json matches what the server does (schemathesis).

Every operation is called with generated requests (valid by the schema) and every answer is
checked: no 5xx, the status code and content type are documented, the body and the headers
match their schemas.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis

# schemathesis imports this module lazily while hypothesis draws a case, deep in the stack, where
# CPython 3.11's compile() once failed with "AST constructor recursion depth mismatch" (a
# SystemError inside the import, not an answer of ours). Importing it here, at the top of the
# stack, takes that import out of the draw.
import schemathesis.generation.dictionaries
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from iotdps.access import make_service_sas
from iotdps_testing.mgmt import ManagementServer

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def api_schema(server: ManagementServer) -> schemathesis.BaseSchema:
    raw = requests.get(f"{server.base_url}/openapi.json", verify=str(server.ca_path), timeout=30).json()
    assert raw["openapi"].startswith("3.")
    return schemathesis.openapi.from_dict(raw)


def _exercise(operation: Any, server: ManagementServer, token: str) -> None:
    # A schema-valid body can still be refused with the documented 400 (a certificate that
    # does not parse, a caReference to no uploaded CA...), and so can a made-up continuation
    # token (opaque by design): JSON Schema cannot say that.
    paged = any(p.name == "x-ms-continuation" for p in operation.headers)
    excluded = [positive_data_acceptance] if operation.body or paged else []

    @given(case=operation.as_strategy())
    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        if isinstance(case.body, dict) and "methodName" in case.body:
            # A direct method to a device that is not online waits up to connectTimeoutInSeconds
            # (<= 300 by the schema, as in IoT Hub) for it; keep the generated waits short.
            for field in ("connectTimeoutInSeconds", "responseTimeoutInSeconds"):
                if isinstance(case.body.get(field), int):
                    case.body[field] = min(case.body[field], 1)
        if isinstance(case.query, dict) and isinstance(case.query.get("timeout"), int):
            case.query["timeout"] = 1  # a telemetry stream stays open that long
        case.call_and_validate(
            timeout=60,  # a hang is a failure with a name, not the test's timeout
            base_url=server.base_url,
            headers={"Authorization": token},
            verify=str(server.ca_path),
            excluded_checks=excluded,
        )

    check()


@pytest.mark.timeout(600)
def test_server_matches_its_openapi_document(api_schema: schemathesis.BaseSchema, server: ManagementServer) -> None:
    # schemathesis's pytest plugin does not load under this pytest, so each operation's
    # strategy is driven by hypothesis directly; the checks are schemathesis's own.
    tokens = {
        scope: make_service_sas(server.host, policy, server.policies.get(policy).primary_key.reveal())
        for scope, policy in (("dps", "provisioningserviceowner"), ("hub", "iothubowner"))
    }
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 40
    for operation in operations:
        hub = operation.path.startswith(("/devices", "/twins", "/statistics"))
        _exercise(operation, server, tokens["hub" if hub else "dps"])

"""CA proof of possession (provisioning.ca_admin): upload, a single-use code, verification."""

from __future__ import annotations

from datetime import timedelta

import pytest
from certkit import issue
from helpers import Env

from iotdps.errors import InvalidInput, NotFound, PreconditionFailed


async def test_proof_of_possession() -> None:
    env = await Env().setup()
    root = issue("factory-root", ca=True)
    ca = await env.cas.upload_ca("factory", root.pem)
    assert not ca.is_verified
    with pytest.raises(InvalidInput, match="no outstanding verification code"):
        await env.cas.verify_ca("factory", issue("x", root).pem)
    with pytest.raises(PreconditionFailed):
        await env.cas.generate_verification_code("factory", if_match="stale")
    code, ca = await env.cas.generate_verification_code("factory", if_match=ca.etag)
    assert len(code) == 48 and code not in repr(ca)

    with pytest.raises(InvalidInput, match="CN is not the outstanding"):
        await env.cas.verify_ca("factory", issue("WRONG", root).pem)
    with pytest.raises(InvalidInput, match="not signed by CA factory"):
        await env.cas.verify_ca("factory", issue(code, issue("other", ca=True)).pem)
    verified = await env.cas.verify_ca("factory", issue(code, root).pem, if_match=ca.etag)
    assert verified.is_verified and verified.verification_code is None
    # Single use: the code is gone.
    with pytest.raises(InvalidInput):
        await env.cas.verify_ca("factory", issue(code, root).pem)
    with pytest.raises(NotFound):
        await env.cas.generate_verification_code("nope")


async def test_verification_code_expires() -> None:
    env = await Env().setup()
    root = issue("factory-root", ca=True)
    await env.cas.upload_ca("factory", root.pem)
    code, _ = await env.cas.generate_verification_code("factory")
    env.clock.current += timedelta(hours=2)
    with pytest.raises(InvalidInput, match="expired"):
        await env.cas.verify_ca("factory", issue(code, root).pem)


async def test_reuploading_another_certificate_drops_verification() -> None:
    env = await Env().setup()
    await env.cas.upload_ca("factory", issue("r1", ca=True).pem, verified=True)
    same_name = await env.cas.upload_ca("factory", issue("r2", ca=True).pem)
    assert not same_name.is_verified

"""Shared fixtures: a root -> factory -> line hierarchy made with the library."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cryptography import x509

from iotdps.pki import Issuer, KeySpec, Validity, create_intermediate_ca, create_root_ca, generate_private_key


@dataclass
class Hierarchy:
    root: Issuer
    factory: Issuer
    line: Issuer

    @property
    def root_cert(self) -> x509.Certificate:
        return self.root.certificate


def make_hierarchy(root_path_length: int | None = 2, spec: KeySpec = KeySpec.P256) -> Hierarchy:
    rk = generate_private_key(spec)
    root = Issuer(create_root_ca("Test Root", rk, Validity.days(3650), path_length=root_path_length), rk, name="root")
    fk = generate_private_key(spec)
    factory = Issuer(
        create_intermediate_ca(root, "factory-a", fk.public_key(), Validity.days(2000)), fk, root.chain, name="factory"
    )
    lk = generate_private_key(spec)
    line = Issuer(
        create_intermediate_ca(factory, "line-1", lk.public_key(), Validity.days(1000)), lk, factory.chain, name="line"
    )
    return Hierarchy(root, factory, line)


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return make_hierarchy()


@pytest.fixture(scope="session")
def hierarchy_factory():  # type: ignore[no-untyped-def]
    """make_hierarchy itself: test modules cannot import conftest under importlib mode."""
    return make_hierarchy

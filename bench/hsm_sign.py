"""Signing through a PKCS#11 token (SoftHSM2) against software keys and `openssl speed`, in one run.

    python bench/hsm_sign.py [--seconds 1.0] [--specs p256,p384,rsa2048]

Per key type it prints signatures per second, one thread:

* token, raw:    python-pkcs11's C_Sign on the same key, nothing of ours around it
* token, digest: `Pkcs11Signer.sign_digest` (C_Sign under the session lock, r||s to DER)
* token, cert:   a device certificate's TBS signed in the token and wrapped as a Certificate
                 (`external_signing.signed_der`, with the check that the signature verifies)
* cert, no check: the same without that check (what a bulk path could choose)
* software:      cryptography signing the same TBS with a key in memory
* openssl speed: `openssl speed -seconds 1 ecdsap256` (or the matching algorithm), the reference

A temporary SoftHSM2 token is made for the run and removed after. SoftHSM is a software token:
a hardware HSM's rate is its own (often tens to thousands per second), this measures our
overhead around the C_Sign call. The script prints; it never fails on a slow machine.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

import pkcs11  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402

from iotdps.pki import KeySpec, Validity, generate_private_key  # noqa: E402
from iotdps.pki.external_signing import SoftwareSigner, signed_der  # noqa: E402
from iotdps.pki.pkcs11 import Pkcs11Token  # noqa: E402
from iotdps.pki.pkcs11_uri import Pkcs11Config  # noqa: E402
from iotdps.secret import Secret  # noqa: E402
from iotdps_testing.softhsm import start_softhsm  # noqa: E402

_OPENSSL_ALG = {"p256": "ecdsap256", "p384": "ecdsap384", "rsa2048": "rsa2048", "rsa3072": "rsa3072"}


def rate(fn: Callable[[], object], seconds: float, cap: int = 1_000_000) -> float:
    """Calls per second of `fn` over about `seconds` (at most `cap` calls, at least one)."""
    fn()  # warm up (first-call costs: mechanism lookups, lazy imports)
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while n < cap:
        fn()
        n += 1
        if time.perf_counter() >= deadline:
            break
    return n / (time.perf_counter() - start)


def openssl_speed(spec: str) -> float | None:
    """Signatures/s that `openssl speed -seconds 1` reports for `spec`, or None."""
    if shutil.which("openssl") is None:
        return None
    alg = _OPENSSL_ALG[spec]
    try:
        done = subprocess.run(["openssl", "speed", "-seconds", "1", alg], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    # e.g. " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  34012.3  11234.5"
    #      "rsa 2048 bits 0.000612s 0.000018s   1634.0  55555.0"
    for line in done.stdout.splitlines():
        if (alg.startswith("ecdsa") and f"(nist{spec})" in line) or (
            alg.startswith("rsa") and re.match(rf"\s*rsa\s+{alg[3:]}\s+bits", line)
        ):
            try:
                return float(line.split()[-2])  # the columns end with sign/s, verify/s
            except (IndexError, ValueError):
                return None
    return None


def device_tbs(spec: KeySpec) -> bytes:
    """A realistic device certificate's TBS (P-256 subject, clientAuth), signed with `spec`'s
    algorithm family: what a factory CA signs per device."""
    from iotdps.pki import Issuer, create_root_ca, issue_device_certificate

    ca_key = generate_private_key(spec)
    root = Issuer(create_root_ca("Bench Root", ca_key, Validity.days(30)), ca_key, name="bench")
    device = generate_private_key(KeySpec.P256)
    return issue_device_certificate(
        root, "bench-device-0001", device.public_key(), Validity.days(7)
    ).tbs_certificate_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds per measurement (default 1)")
    ap.add_argument("--specs", default="p256,p384,rsa2048", help="key types (p256,p384,rsa2048,rsa3072)")
    args = ap.parse_args()
    seconds = min(max(args.seconds, 0.1), 30.0)
    specs = [KeySpec.parse(s) for s in args.specs.split(",") if s.strip()]

    with tempfile.TemporaryDirectory(prefix="iotdps-hsm-bench-") as tmp:
        hsm = start_softhsm(Path(tmp))
        token_info = hsm.init_token("bench", user_pin="bench-pin-0000")
        config = Pkcs11Config(hsm.module, Secret(token_info.user_pin), token_info.label)
        print(f"SoftHSM2 token in {tmp}; one thread; {seconds:g} s per figure")
        heads = ("token raw/s", "token digest/s", "token cert/s", "no check/s", "software/s", "openssl speed/s")
        print(f"{'key':8s} " + " ".join(f"{h:>15s}" for h in heads))
        with Pkcs11Token.open(config) as token:
            for spec in specs:
                key = token.generate_key(spec, label=f"bench-{spec.value}")
                tbs = device_tbs(spec)
                digest = key.algorithm.hash()
                h = hashes.Hash(digest)
                h.update(tbs)
                tbs_digest = h.finalize()
                mechanism = pkcs11.Mechanism.ECDSA if key.algorithm.ecdsa else pkcs11.Mechanism.RSA_PKCS
                raw_key = key._private  # the python-pkcs11 object: what C_Sign costs without us
                raw = rate(lambda k=raw_key, d=tbs_digest, m=mechanism: k.sign(d, mechanism=m), seconds)
                in_token = rate(lambda k=key, d=tbs_digest: k.sign_digest(d), seconds)
                cert = rate(lambda k=key, t=tbs: signed_der(t, k), seconds)
                unchecked = rate(lambda k=key, t=tbs: signed_der(t, k, verify=False), seconds)
                software_signer = SoftwareSigner(generate_private_key(spec))
                software = rate(lambda s=software_signer, t=tbs: s.sign(t), seconds)
                reference = openssl_speed(spec.value)
                shown = f"{reference:15.0f}" if reference is not None else f"{'n/a':>15s}"
                figures = " ".join(f"{x:15.0f}" for x in (raw, in_token, cert, unchecked, software))
                print(f"{spec.value:8s} {figures} {shown}")


if __name__ == "__main__":
    main()

"""Bulk device minting: iotdps against the openssl CLI, in the same run.

    python bench/mint.py [-n 2000] [--out devices.tar.gz] [--workers 2] [--openssl-jobs 1] [--hsm]

Both sides produce what a factory flashes: per device a fresh P-256 key and a certificate
signed by a production-line CA (root -> factory -> line), with clientAuth/digitalSignature.
iotdps mints through its own library (the code behind `iotdps create-device-cert --count`) on
every core and writes one archive (default: a .tar.gz in a temporary directory) or, if --out
names a directory, per-device files; both with a manifest. openssl runs one
`openssl req -x509 -CA ...` process per certificate, the way a shell loop in a factory does;
--openssl-jobs runs several of those loops side by side.

The rates include writing the output. The CA key is unlocked once on the iotdps side; openssl
gets an unencrypted copy so it pays no KDF per certificate (that favours openssl). This script
prints; it never fails on a slow machine.

With --hsm the line CA's key is also imported into a temporary SoftHSM2 token and the same
batch is minted through it (each worker process logs in to the token with its own session),
so the run prints the token rate next to the file-key rate and the openssl CLI. SoftHSM is a
software token: a hardware HSM signs at its own rate, and this measures iotdps's overhead
around C_Sign plus SoftHSM's signing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # iotdps_testing.softhsm, for --hsm

from cryptography.hazmat.primitives import serialization

from iotdps.pki import (
    CaDirectory,
    Issuer,
    Validity,
    certs_to_pem,
    create_intermediate_ca,
    create_root_ca,
    generate_private_key,
    mint_packed,
    open_device_sink,
)
from iotdps.secret import Secret


def make_line_ca(ca_dir: Path) -> Issuer:
    """root -> factory -> line in a CA directory, as the CLI would; return the line issuer."""
    cadir = CaDirectory(ca_dir)
    pw = Secret("bench-passphrase")
    rk = generate_private_key()
    cadir.add("root", create_root_ca("Bench Root", rk, Validity.days(3650), path_length=2), rk, pw)
    parent = cadir.issuer("root", pw)
    for name in ("factory", "line"):
        k = generate_private_key()
        cadir.add(
            name,
            create_intermediate_ca(parent, name, k.public_key(), Validity.days(1800), clamp=True),
            k,
            pw,
            parent=parent.name,
        )
        parent = cadir.issuer(name, pw)
    return cadir.issuer("line", pw)  # one KDF, once, for the whole batch


def run_iotdps(issuer: Issuer, n: int, out: Path, workers: int | None) -> float:
    ids = [f"bench-{i:07d}" for i in range(n)]
    start = time.perf_counter()
    with open_device_sink(out) as sink:
        for packed in mint_packed(issuer, ids, Validity.days(365), sink.packer, workers=workers):
            sink.add_packed(packed)
    return time.perf_counter() - start


def token_issuer(issuer: Issuer, work: Path) -> Issuer:
    """The same line CA with its key imported into a fresh SoftHSM2 token (the file key's
    twin, so both sides sign with one key and produce comparable certificates)."""
    from iotdps.pki.pkcs11 import Pkcs11Token
    from iotdps.pki.pkcs11_uri import Pkcs11Config
    from iotdps_testing.softhsm import SOFTHSM_MODULE, start_softhsm

    hsm = start_softhsm(work / "softhsm")  # before the module loads: SoftHSM reads its conf once
    token = hsm.init_token("bench-ca", user_pin="bench-pin-1234")
    opened = Pkcs11Token.open(Pkcs11Config(SOFTHSM_MODULE, Secret(token.user_pin), token.label))
    assert issuer.private_key is not None
    signer = opened.import_key(issuer.private_key, label="line")
    return Issuer(issuer.certificate, signer, issuer.parents, name="line-in-token")


def run_openssl(issuer: Issuer, n: int, work: Path, jobs: int) -> float:
    ca_pem, ca_key = work / "line.pem", work / "line.key"
    ca_pem.write_bytes(certs_to_pem([issuer.certificate]))
    ca_key.write_bytes(
        issuer.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(ca_key, 0o600)
    tail = certs_to_pem(issuer.bundle)
    out = work / "openssl-devices"
    out.mkdir()

    def one(i: int) -> None:
        rid = f"bench-{i:07d}"
        cert = out / f"{rid}.leaf.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(out / f"{rid}.key.pem"),
                "-out",
                str(cert),
                "-subj",
                f"/CN={rid}",
                "-CA",
                str(ca_pem),
                "-CAkey",
                str(ca_key),
                "-days",
                "365",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-addext",
                "keyUsage=critical,digitalSignature",
                "-addext",
                "extendedKeyUsage=clientAuth",
            ],
            check=True,
            capture_output=True,
        )
        (out / f"{rid}.cert.pem").write_bytes(cert.read_bytes() + tail)  # the same bundle iotdps writes

    start = time.perf_counter()
    if jobs == 1:
        for i in range(n):
            one(i)
    else:
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, range(n)))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="certificates per side (default 2000)")
    ap.add_argument("--openssl-n", type=int, default=None, help="openssl certificates (default: -n)")
    ap.add_argument("--workers", type=int, default=None, help="iotdps processes (default: all cores)")
    ap.add_argument("--openssl-jobs", type=int, default=1, help="openssl loops side by side (default 1)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="keep iotdps output here (a new directory, or .tar/.tar.gz/.tgz/.zip archive)",
    )
    ap.add_argument("--hsm", action="store_true", help="also mint with the CA key in a SoftHSM2 token")
    ap.add_argument("--hsm-n", type=int, default=None, help="certificates through the token (default: -n)")
    args = ap.parse_args()
    if shutil.which("openssl") is None:
        print("openssl binary not found; only iotdps is measured")
    with tempfile.TemporaryDirectory(prefix="iotdps-bench-") as tmp:
        work = Path(tmp)
        issuer = make_line_ca(work / "ca")
        # Default: one archive. A directory of per-device files is the other factory format, but
        # its speed is the file system's (creating a file costs ~0.5 ms on our CI disk).
        out = args.out or work / "iotdps-devices.tar.gz"
        n = args.n
        ours = run_iotdps(issuer, n, out, args.workers)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        our_rate = n / ours
        print(
            f"iotdps : {n:7d} certs in {ours:7.3f} s = {our_rate:9.0f} certs/s "
            f"({args.workers or cores} worker processes, output: {out})"
        )
        hsm_rate: float | None = None
        if args.hsm:
            in_token = token_issuer(issuer, work)
            h = args.hsm_n or n
            hsm_time = run_iotdps(in_token, h, work / "iotdps-hsm-devices.tar.gz", args.workers)
            hsm_rate = h / hsm_time
            print(
                f"iotdps+HSM: {h:7d} certs in {hsm_time:7.3f} s = {hsm_rate:9.0f} certs/s "
                f"(CA key in a SoftHSM2 token, {args.workers or cores} worker processes, one session each); "
                f"{hsm_rate / our_rate:.0%} of the file-key rate"
            )
        if shutil.which("openssl") is not None:
            m = args.openssl_n or n
            theirs = run_openssl(issuer, m, work, args.openssl_jobs)
            their_rate = m / theirs
            print(
                f"openssl: {m:7d} certs in {theirs:7.3f} s = {their_rate:9.0f} certs/s "
                f"(one process per certificate, {args.openssl_jobs} loop(s) in parallel)"
            )
            print(
                f"ratio  : iotdps is {our_rate / their_rate:.0f}x the openssl CLI rate "
                f"(target >= 100x, and >= 5000 certs/s)"
            )
            if hsm_rate is not None:
                print(
                    f"ratio  : iotdps with the CA key in the token is {hsm_rate / their_rate:.0f}x the openssl CLI rate"
                )
        if args.out is None:
            print("(output discarded; pass --out to keep it)")


if __name__ == "__main__":
    main()

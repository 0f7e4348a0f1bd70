"""CA keys in a PKCS#11 token (an HSM, a smart card, SoftHSM): find, create, import, sign.

Keys are named by RFC 7512 URIs, and the module and PIN come from the environment: see
pkcs11_uri.py. Keys made here never leave the token: generated inside it with CKA_SENSITIVE and
without CKA_EXTRACTABLE, so the token refuses to reveal or wrap them. An existing key file can
be imported once, marked sensitive and non-extractable on the way in (the token then reports it
as not ALWAYS_SENSITIVE, since it was once outside; `Pkcs11Signer.custody` says which).

Hashing happens here and the token signs the digest (CKM_ECDSA, CKM_RSA_PKCS over a
DigestInfo): every token has those two mechanisms, where the hash-and-sign ones vary (SoftHSM
2.6 has no CKM_ECDSA_SHA256), and only 32 or 48 bytes cross to the token per signature.

PKCS#11 keeps one login state per process and token: closing any session of a token that was
logged in logs out all of them. So one logged-in session per (module, token) is shared by every
`Pkcs11Token` opened in the process, reference-counted, and used under a lock (a session runs
one operation at a time). Sessions do not survive fork(): a child process must open its own.

python-pkcs11 is an optional dependency (`pip install 'iotdps[hsm]'`); without it every entry
point here raises one Pkcs11Error that says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotdps.errors import AlreadyExists, InvalidInput
from iotdps.pki.der import oid as _oid
from iotdps.pki.der import tlv as _tlv
from iotdps.pki.external_signing import (
    SignatureAlgorithm,
    SignerPublicKey,
    algorithm_for_public_key,
    ecdsa_raw_to_der,
)
from iotdps.pki.keys import KeySpec, PrivateKey, public_keys_match
from iotdps.pki.pkcs11_uri import (
    ENV_MODULE,
    ENV_TOKEN,
    KeyMismatch,
    KeyNotFound,
    ModuleNotFound,
    Pkcs11Config,
    Pkcs11Error,
    Pkcs11Uri,
    TokenNotFound,
    WrongPin,
)
from iotdps.secret import Secret

try:
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, TokenFlag

    _MISSING: str | None = None
except ImportError:  # the hsm extra is not installed
    _MISSING = "PKCS#11 support needs python-pkcs11: install iotdps with the hsm extra (pip install 'iotdps[hsm]')"

__all__ = ["Pkcs11Signer", "Pkcs11Token"]


def _require() -> None:
    if _MISSING is not None:
        raise Pkcs11Error(_MISSING)


# -- sessions --------------------------------------------------------------------------------


def _module(path: Path) -> Any:
    """The loaded PKCS#11 module at `path` (python-pkcs11 keeps one per path per process)."""
    _require()
    if not path.is_file():
        raise ModuleNotFound(f"the PKCS#11 module {path} does not exist ({ENV_MODULE})")
    try:
        lib = pkcs11.lib(str(path))
        # PKCS#11 (5.4): a forked child must initialise the module again before using it; the
        # parent's copy of its state is not the child's to use.
        if _LOADED_IN.setdefault(str(path), os.getpid()) != os.getpid():
            lib.reinitialize()
            _LOADED_IN[str(path)] = os.getpid()
        return lib
    except pkcs11.PKCS11Error as exc:
        raise ModuleNotFound(f"cannot load {path} as a PKCS#11 module: {exc or type(exc).__name__}") from None


_LOADED_IN: dict[str, int] = {}  # module path -> the process that initialised it


class _Shared:
    """The one logged-in session of a token in this process (see the module docstring)."""

    def __init__(self, token: Any, session: Any, label: str, pin_digest: bytes) -> None:
        self.token = token
        self.session = session
        self.label = label
        self.pin_digest = pin_digest
        self.refs = 0
        self.pid = os.getpid()
        self.lock = threading.RLock()

    @contextlib.contextmanager
    def use(self) -> Iterator[Any]:
        """The session, held for one operation (a PKCS#11 session runs one at a time)."""
        if self.pid != os.getpid():
            raise Pkcs11Error(f"PKCS#11 token {self.label!r} was opened before fork(); open it in this process")
        with self.lock:
            if self.refs <= 0:
                raise Pkcs11Error(f"PKCS#11 token {self.label!r} was closed")
            yield self.session


_SESSIONS: dict[tuple[str, str], _Shared] = {}
_SESSIONS_LOCK = threading.Lock()


def _pin_digest(pin: Secret[str]) -> bytes:
    # Only for comparing a second open's PIN with the first's; never stored anywhere else.
    return hashlib.sha256(pin.reveal().encode("utf-8")).digest()


def _mismatch(token: Any, uri: Pkcs11Uri) -> str | None:
    """The first of the URI's manufacturer/model/serial that `token` does not have, as `name=value`."""
    for name, attr, wanted in (
        ("manufacturer", "manufacturer_id", uri.manufacturer),
        ("model", "model", uri.model),
        ("serial", "serial", uri.serial),
    ):
        have = getattr(token, attr)
        have = have.decode("utf-8", "replace") if isinstance(have, bytes) else have
        if wanted is not None and have.strip() != wanted:
            return f"{name}={wanted!r} (it has {have.strip()!r})"
    return None


def _find_token(lib: Any, module: Path, uri: Pkcs11Uri, label: str) -> Any:
    try:
        labelled = list(lib.get_tokens(token_label=label))
        # Modules list a free slot's uninitialised token too (SoftHSM does): not worth naming.
        present = sorted({t.label for t in lib.get_tokens() if t.flags & TokenFlag.TOKEN_INITIALIZED})
    except pkcs11.PKCS11Error as exc:
        raise Pkcs11Error(f"cannot list the tokens of {module}: {type(exc).__name__}") from None
    if not labelled:
        known = ", ".join(repr(p) for p in present) or "none"
        raise TokenNotFound(f"no PKCS#11 token labelled {label!r} in {module} (tokens present: {known})")
    tokens = [t for t in labelled if _mismatch(t, uri) is None]
    if not tokens:
        raise TokenNotFound(f"PKCS#11 token {label!r} does not match the URI's {_mismatch(labelled[0], uri)}")
    if len(tokens) > 1:
        raise Pkcs11Error(f"{len(tokens)} PKCS#11 tokens are labelled {label!r}; add serial= to the URI")
    return tokens[0]


def _login(token: Any, label: str, pin: Secret[str]) -> Any:
    try:
        return token.open(rw=True, user_pin=pin.reveal())
    except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange):
        raise WrongPin(f"wrong PIN for PKCS#11 token {label!r}") from None
    except pkcs11.PinLocked:
        raise Pkcs11Error(
            f"the user PIN of PKCS#11 token {label!r} is locked; the security officer must reset it"
        ) from None
    except pkcs11.PinExpired:
        raise Pkcs11Error(f"the user PIN of PKCS#11 token {label!r} has expired; set a new one") from None
    except pkcs11.UserPinNotInitialized:
        raise Pkcs11Error(f"PKCS#11 token {label!r} has no user PIN yet; initialise it first") from None
    except pkcs11.PKCS11Error as exc:
        raise Pkcs11Error(f"cannot log in to PKCS#11 token {label!r}: {type(exc).__name__}") from None


# -- keys ------------------------------------------------------------------------------------

_CURVES: dict[str, tuple[ec.EllipticCurve, bytes]] = {
    "p256": (ec.SECP256R1(), _oid("1.2.840.10045.3.1.7")),
    "p384": (ec.SECP384R1(), _oid("1.3.132.0.34")),
}
_HASH_OIDS = {"sha256": _oid("2.16.840.1.101.3.4.2.1"), "sha384": _oid("2.16.840.1.101.3.4.2.2")}


def _digest_info(algorithm: SignatureAlgorithm, digest: bytes) -> bytes:
    """PKCS#1 v1.5's DigestInfo (RFC 8017 9.2): what CKM_RSA_PKCS pads and signs."""
    return _tlv(0x30, _tlv(0x30, _HASH_OIDS[algorithm.hash_name] + b"\x05\x00") + _tlv(0x04, digest))


def _ec_public_key(params: bytes, point: bytes, what: str) -> ec.EllipticCurvePublicKey:
    for curve, encoded in _CURVES.values():
        if params == encoded:
            width = 2 * ((curve.key_size + 7) // 8) + 1  # an uncompressed point
            if len(point) != width and point[:1] == b"\x04":  # CKA_EC_POINT is a DER OCTET STRING...
                point = point[2:] if point[1] < 0x80 else point[2 + (point[1] & 0x7F) :]
            try:  # ...though some tokens return the bare point
                return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
            except ValueError:
                raise Pkcs11Error(f"{what} has a malformed EC public point") from None
    raise Pkcs11Error(f"{what} is on a curve iotdps does not use (P-256 and P-384 only)")


class Pkcs11Signer:
    """A private key in a token, as a `Signer` (external_signing.Signer): its public key, its
    signature algorithm, and `sign(data)` returning the DER signature that X.509 carries."""

    def __init__(
        self,
        shared: _Shared,
        private: Any,
        public_key: SignerPublicKey,
        label: str,
        key_id: bytes,
        config: Pkcs11Config | None = None,
    ) -> None:
        self._shared = shared
        self._config = config
        self._private = private
        self._public = public_key
        self._algorithm = algorithm_for_public_key(public_key)
        self._digest_size = self._algorithm.hash().digest_size
        self.label = label
        self.key_id = key_id

    def __repr__(self) -> str:
        return f"Pkcs11Signer(token={self._shared.label!r}, label={self.label!r}, {self._algorithm.name})"

    @property
    def uri(self) -> Pkcs11Uri:
        return Pkcs11Uri(token=self._shared.label, object=self.label, id=self.key_id, type="private")

    @property
    def algorithm(self) -> SignatureAlgorithm:
        return self._algorithm

    def public_key(self) -> SignerPublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self.sign_digest(hashlib.new(self._algorithm.hash_name, data).digest())

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a digest made with `algorithm`'s hash (SHA-256 or SHA-384)."""
        algorithm = self._algorithm
        if len(digest) != self._digest_size:
            raise InvalidInput(f"a {algorithm.hash_name} digest is {self._digest_size} bytes, not {len(digest)}")
        if algorithm.ecdsa:
            mechanism, payload = Mechanism.ECDSA, digest
        else:
            mechanism, payload = Mechanism.RSA_PKCS, _digest_info(algorithm, digest)
        with self._shared.use():
            try:
                raw = self._private.sign(payload, mechanism=mechanism)
            except pkcs11.PKCS11Error as exc:
                raise Pkcs11Error(
                    f"signing with key {self.label!r} in PKCS#11 token {self._shared.label!r} failed: "
                    f"{type(exc).__name__}"
                ) from None
        return ecdsa_raw_to_der(raw) if algorithm.ecdsa else bytes(raw)

    def reopen(self) -> Pkcs11Signer:
        """This key through a session of the calling process: what a forked bulk-minting
        worker uses, since the parent's session is not the child's (see the module docstring).
        The child's session stays open for the life of that process."""
        if self._config is None:
            raise Pkcs11Error(f"key {self.label!r} was not opened from a configuration; it cannot be reopened")
        if self._shared.pid == os.getpid():
            return self
        token = Pkcs11Token.open(self._config, Pkcs11Uri(token=self._shared.label))
        return token.find_key(Pkcs11Uri(object=self.label or None, id=self.key_id or None), public_key=self._public)

    def custody(self) -> str:
        """Where the key has been, as the token tells it."""
        with self._shared.use():
            attrs = self._private.get_attributes(
                [Attribute.LOCAL, Attribute.ALWAYS_SENSITIVE, Attribute.NEVER_EXTRACTABLE, Attribute.EXTRACTABLE]
            )
        if attrs[Attribute.EXTRACTABLE]:
            return "extractable"
        if attrs[Attribute.LOCAL] and attrs[Attribute.ALWAYS_SENSITIVE] and attrs[Attribute.NEVER_EXTRACTABLE]:
            return "generated in the token, never extractable"
        return "imported, now sensitive and non-extractable"


class Pkcs11Token:
    """An open, logged-in token. Use as a context manager, or call `close()`."""

    def __init__(self, shared: _Shared, key: tuple[str, str], config: Pkcs11Config) -> None:
        self._shared = shared
        self._key = key
        self._config = config
        self._module = config.module_path
        self._closed = False

    @classmethod
    def open(cls, config: Pkcs11Config, uri: Pkcs11Uri | None = None) -> Pkcs11Token:
        """Log in to the token `uri` names (or `config.token_label`) with the configured PIN."""
        uri = (uri or Pkcs11Uri()).key_only()
        label = uri.token or config.token_label
        if not label:
            raise InvalidInput(f"name the PKCS#11 token: token= in the URI, or {ENV_TOKEN}")
        lib = _module(config.module_path)
        key = (str(config.module_path.resolve()), label)
        digest = _pin_digest(config.pin)
        with _SESSIONS_LOCK:
            shared = _SESSIONS.get(key)
            if shared is not None and shared.pid != os.getpid():
                shared = None  # inherited through fork(): unusable here, and not ours to close
            if shared is None:
                token = _find_token(lib, config.module_path, uri, label)
                shared = _Shared(token, _login(token, label, config.pin), label, digest)
                _SESSIONS[key] = shared
            else:
                # Already logged in by an earlier open: the token would not check this PIN, nor
                # would _find_token see this URI's manufacturer/model/serial.
                if not hmac.compare_digest(shared.pin_digest, digest):
                    raise WrongPin(f"wrong PIN for PKCS#11 token {label!r}")
                mismatch = _mismatch(shared.token, uri)
                if mismatch is not None:
                    raise TokenNotFound(f"PKCS#11 token {label!r} does not match the URI's {mismatch}")
            shared.refs += 1
        return cls(shared, key, config)

    @property
    def label(self) -> str:
        return self._shared.label

    def __repr__(self) -> str:
        return f"Pkcs11Token({self.label!r}, module={str(self._module)!r})"

    def __enter__(self) -> Pkcs11Token:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _SESSIONS_LOCK:
            shared = self._shared
            shared.refs -= 1
            if shared.refs > 0 or shared.pid != os.getpid():
                return
            if _SESSIONS.get(self._key) is shared:
                del _SESSIONS[self._key]
            with shared.lock:
                try:
                    shared.session.close()  # logs out too
                except pkcs11.PKCS11Error:
                    pass  # the token went away; nothing is left to release

    @contextlib.contextmanager
    def _use(self) -> Iterator[Any]:
        if self._closed:
            raise Pkcs11Error(f"PKCS#11 token {self.label!r} was closed")
        with self._shared.use() as session:
            yield session

    def _objects(self, object_class: Any, uri: Pkcs11Uri) -> list[Any]:
        attrs: dict[Any, Any] = {Attribute.CLASS: object_class}
        if uri.object is not None:
            attrs[Attribute.LABEL] = uri.object
        if uri.id is not None:
            attrs[Attribute.ID] = uri.id
        with self._use() as session:
            return list(session.get_objects(attrs))

    def find_key(self, uri: Pkcs11Uri, *, public_key: SignerPublicKey | None = None) -> Pkcs11Signer:
        """The private key `uri` names (by object= and/or id=), as a signer.

        Its public key comes from the token's public key object of the same label/id, or from
        `public_key` (say, from the CA certificate) where the token keeps none; when both exist
        they must match.
        """
        uri.key_only()
        if uri.type not in (None, "private"):
            raise InvalidInput(f"a signing key's URI names a private key (type=private), not type={uri.type}")
        if uri.object is None and uri.id is None:
            raise InvalidInput("the PKCS#11 URI must name the key: object= (its label) or id=")
        where = f"in PKCS#11 token {self.label!r}"
        found = self._objects(ObjectClass.PRIVATE_KEY, uri)
        if not found:
            raise KeyNotFound(f"no private key with {uri.describe()} {where}")
        if len(found) > 1:
            raise Pkcs11Error(f"{len(found)} private keys match {uri.describe()} {where}; add id= to the URI")
        private = found[0]
        with self._use():
            label, key_id = private[Attribute.LABEL], private[Attribute.ID]
        # The public object is found by the private key's own id (and label), not the URI's.
        publics = self._objects(ObjectClass.PUBLIC_KEY, Pkcs11Uri(object=label or None, id=key_id or None))
        what = f"key {label!r} {where}"
        in_token = self._public_from_object(publics[0], what) if len(publics) == 1 else None
        if in_token is not None and public_key is not None and not public_keys_match(in_token, public_key):
            raise KeyMismatch(f"{what} does not match the expected public key (the CA certificate's)")
        chosen = in_token or public_key
        if chosen is None:
            raise Pkcs11Error(f"{what} has no public key object; give the CA certificate to find its public key")
        return Pkcs11Signer(self._shared, private, chosen, label, key_id, self._config)

    def destroy_key(self, uri: Pkcs11Uri, *, public_key: SignerPublicKey | None = None) -> bool:
        """Destroy the private key `uri` names and its public key object (a retired CA's: a key
        nothing signs with any more cannot be misused). With `public_key`, only if the key is
        that one's. False when there was no such key."""
        try:
            signer = self.find_key(uri, public_key=public_key)
        except KeyNotFound:
            return False
        match = Pkcs11Uri(object=signer.label or None, id=signer.key_id or None)
        try:
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                for obj in self._objects(object_class, match):
                    with self._use():
                        obj.destroy()
        except pkcs11.PKCS11Error as exc:
            raise Pkcs11Error(
                f"PKCS#11 token {self.label!r} refused to destroy key {uri.describe()}: {type(exc).__name__}"
            ) from None
        return True

    def _public_from_object(self, obj: Any, what: str) -> SignerPublicKey:
        with self._use():
            key_type = obj[Attribute.KEY_TYPE]
            if key_type == KeyType.EC:
                return _ec_public_key(obj[Attribute.EC_PARAMS], obj[Attribute.EC_POINT], what)
            if key_type == KeyType.RSA:
                n = int.from_bytes(obj[Attribute.MODULUS], "big")
                e = int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big")
                return rsa.RSAPublicNumbers(e, n).public_key()
        raise Pkcs11Error(f"{what} is a {key_type} key; iotdps signs with EC and RSA keys")

    def _check_free(self, label: str, key_id: bytes) -> None:
        if not label or len(label) > 64 or any(ord(c) < 0x20 for c in label):
            raise InvalidInput("a key label is 1-64 printable characters")
        for uri in (Pkcs11Uri(object=label), Pkcs11Uri(id=key_id)):
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                if self._objects(object_class, uri):
                    raise AlreadyExists(f"a key with {uri.describe()} already exists in PKCS#11 token {self.label!r}")

    def generate_key(self, spec: KeySpec, *, label: str, key_id: bytes | None = None) -> Pkcs11Signer:
        """A new key pair made inside the token: the private half sensitive and never extractable."""
        if not isinstance(spec, KeySpec):
            raise TypeError("spec must be a KeySpec")
        key_id = key_id if key_id is not None else os.urandom(16)
        self._check_free(label, key_id)
        private_template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
        }
        public_template: dict[Any, Any] = {Attribute.TOKEN: True, Attribute.VERIFY: True}
        if spec in (KeySpec.RSA2048, KeySpec.RSA3072):
            key_type, bits = KeyType.RSA, (2048 if spec is KeySpec.RSA2048 else 3072)
        else:
            key_type, bits = KeyType.EC, None
            public_template[Attribute.EC_PARAMS] = _CURVES[spec.value][1]
        try:
            with self._use() as session:
                session.generate_keypair(
                    key_type,
                    bits,
                    id=key_id,
                    label=label,
                    store=True,
                    capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                    public_template=public_template,
                    private_template=private_template,
                )
        except pkcs11.PKCS11Error as exc:
            raise Pkcs11Error(
                f"PKCS#11 token {self.label!r} could not generate a {spec.value} key: {type(exc).__name__}"
            ) from None
        return self.find_key(Pkcs11Uri(object=label, id=key_id))

    def import_key(self, key: PrivateKey, *, label: str, key_id: bytes | None = None) -> Pkcs11Signer:
        """Copy an existing private key into the token, sensitive and non-extractable, with its
        public key beside it. Import once, then destroy the file: the token cannot undo that."""
        key_id = key_id if key_id is not None else os.urandom(16)
        self._check_free(label, key_id)
        common: dict[Any, Any] = {Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: key_id}
        private: dict[Any, Any] = {
            **common,
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
        }
        public: dict[Any, Any] = {**common, Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.VERIFY: True}
        algorithm_for_public_key(key.public_key())  # refuses curves and sizes we do not sign with

        def big(n: int) -> bytes:
            return n.to_bytes((n.bit_length() + 7) // 8 or 1, "big")

        if isinstance(key, ec.EllipticCurvePrivateKey):
            spec = "p256" if isinstance(key.curve, ec.SECP256R1) else "p384"
            curve_der = _CURVES[spec][1]
            width = (key.curve.key_size + 7) // 8
            point = key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            private |= {
                Attribute.KEY_TYPE: KeyType.EC,
                Attribute.EC_PARAMS: curve_der,
                Attribute.VALUE: key.private_numbers().private_value.to_bytes(width, "big"),
            }
            public |= {
                Attribute.KEY_TYPE: KeyType.EC,
                Attribute.EC_PARAMS: curve_der,
                Attribute.EC_POINT: _tlv(0x04, point),
            }
        elif isinstance(key, rsa.RSAPrivateKey):
            nums = key.private_numbers()
            pub = nums.public_numbers
            private |= {
                Attribute.KEY_TYPE: KeyType.RSA,
                Attribute.MODULUS: big(pub.n),
                Attribute.PUBLIC_EXPONENT: big(pub.e),
                Attribute.PRIVATE_EXPONENT: big(nums.d),
                Attribute.PRIME_1: big(nums.p),
                Attribute.PRIME_2: big(nums.q),
                Attribute.EXPONENT_1: big(nums.dmp1),
                Attribute.EXPONENT_2: big(nums.dmq1),
                Attribute.COEFFICIENT: big(nums.iqmp),
            }
            public |= {
                Attribute.KEY_TYPE: KeyType.RSA,
                Attribute.MODULUS: big(pub.n),
                Attribute.PUBLIC_EXPONENT: big(pub.e),
            }
        else:
            raise TypeError("key must be an EC or RSA private key")
        try:
            with self._use() as session:
                made = session.create_object(private)
                try:
                    session.create_object(public)
                except pkcs11.PKCS11Error:
                    made.destroy()  # no half-imported key: a second attempt must find the label free
                    raise
        except pkcs11.PKCS11Error as exc:
            raise Pkcs11Error(f"PKCS#11 token {self.label!r} refused the key import: {type(exc).__name__}") from None
        signer = self.find_key(Pkcs11Uri(object=label, id=key_id), public_key=key.public_key())
        if not public_keys_match(signer.public_key(), key.public_key()):
            raise Pkcs11Error(f"the key imported into PKCS#11 token {self.label!r} does not match the key file")
        return signer

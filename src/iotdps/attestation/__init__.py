"""Attestation: who is this device? X.509 chains, SAS tokens, TPM (EK + HTTPS challenge).

One module per mechanism (x509.py, symmetric_key.py, tpm.py), each a small plug-in behind
`authentication.Mechanism`; `mechanisms.mechanism_for` picks one by the credential's type and
answers an unknown credential with None, an explicit "unsupported", not a crash.
"""

__all__: list[str] = []

"""Attestation: who is this device? X.509 chains, SAS tokens, TPM (unsupported for now).

Each mechanism is a small plug-in behind `registry.Mechanism`; `registry.mechanism_for`
answers an unknown mechanism with an explicit "unsupported", not a crash. The package
`__init__` imports nothing so that `enrollment.resolve` can use the helpers without a cycle.
"""

__all__: list[str] = []

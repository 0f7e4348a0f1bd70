"""The register pipeline: attestation, enrollment precedence, allocation, reprovisioning."""

__all__: list[str] = []

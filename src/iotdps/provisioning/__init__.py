"""Provisioning: what a device may ask of DPS (`service`: authenticate, register, status), the
register pipeline's parts (registration, lifecycle, reprovision, placement), and the services
operators use beside it: explain, the TLS trust anchors, CA proof of possession (`ca_admin`) and
writing enrollments (`admin`)."""

__all__: list[str] = []

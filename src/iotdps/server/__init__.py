"""Network adapters: listeners, TLS, the DPS and hub endpoints; app.py wires them."""

__all__: list[str] = []

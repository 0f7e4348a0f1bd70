"""Allocation: which linked hub gets a device (hashed, static, geoLatency, custom webhook).

The built-in policies are pure functions; the custom policy calls a webhook through the
injected `WebhookTransport` port. `allocation.policy.allocate_builtin` and
`allocation.custom.call_webhook` are the entry points the provisioning service uses.
"""

__all__: list[str] = []

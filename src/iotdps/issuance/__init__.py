"""Certificate issuance at registration (issue 18): the records the service keeps about it.

`models`: issuing CA objects (what an enrollment's issuance policy names) and the record of
every certificate issued. `sealing`: how the secrets an issuing CA needs (a CFSSL auth key, a
local CA key's passphrase) are kept encrypted at rest. The CSR checks, the issuers themselves
and trust bundles live in `iotdps.pki` (csr_policy, issuing, trust_bundle).
"""

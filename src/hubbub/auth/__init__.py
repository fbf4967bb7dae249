"""Identity: verifying connection tokens (JWT) and minting them (``hubbub token``).

The chat core reads the result, an :class:`hubbub.core.Identity`; this package
is the adapter that makes one from a token, under the ``--auth`` mode.
"""

"""Keys made at test time (cryptography) and tokens signed with them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = "s" * 40


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: Any, path: Path) -> str:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(path)


def private_pem(key: Any, path: Path) -> str:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def jwks(path: Path, **keys: Any) -> str:
    """A JWKS file with each public key under its kid."""
    entries = []
    for kid, key in keys.items():
        pub = key.public_key()
        algo = (
            jwt.algorithms.RSAAlgorithm
            if isinstance(pub, rsa.RSAPublicKey)
            else (jwt.algorithms.ECAlgorithm)
        )
        entry = dict(algo.to_jwk(pub, as_dict=True))
        entry["kid"] = kid
        entries.append(entry)
    path.write_text(json.dumps({"keys": entries}))
    return str(path)


def token(
    key: Any = SECRET,
    alg: str = "HS256",
    kid: str | None = None,
    ttl: float | None = 3600,
    **claims: Any,
) -> str:
    now = time.time()
    body: dict[str, Any] = {"sub": "ann", **claims}
    if ttl is not None:
        body.setdefault("exp", int(now + ttl))
    headers = {"kid": kid} if kid else None
    return jwt.encode(body, key, algorithm=alg, headers=headers)

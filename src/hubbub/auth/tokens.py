"""Connection tokens (JWT, with PyJWT): verifying them, loading the keys, minting them.

Rules (docs/security.md, *Tokens*):

* Algorithms are pinned by the key, never taken from the token: ``HS256`` with
  ``--jwt-secret`` (at least 32 bytes), ``RS256`` with an RSA public key (at
  least 2048 bits) and ``ES256`` with a P-256 public key given by
  ``--jwt-public-key`` (a PEM file, or a JWKS whose keys are picked by ``kid``).
  ``none`` and an HS token checked against a public key are refused.
* ``sub`` is required (1-128 characters). ``exp`` is honoured when present (a
  token without ``exp`` is accepted and never expires: mint short-lived ones),
  ``nbf`` too, with :data:`LEEWAY` seconds for clock skew; ``aud`` / ``iss``
  are checked when the server sets ``jwt_audience`` / ``jwt_issuer``.
* ``name`` (optional) must be a valid nickname, ``rooms`` (optional) is ``"*"``
  or a list of at most :data:`MAX_ROOM_CLAIMS` room names, ``roles`` a list of
  at most :data:`MAX_ROLES` short names. A token breaking one is refused with
  the rule in words.

Nothing here logs or echoes a token.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import jwt
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .. import protocol as p
from ..core import Identity
from ..errors import StartupError

#: Seconds of clock skew allowed on ``exp`` and ``nbf``.
LEEWAY = 5.0
#: Bytes an HS256 secret must have at least (RFC 7518 3.2: a key as long as the hash).
MIN_SECRET = 32
#: Bits an RSA public key must have at least.
MIN_RSA_BITS = 2048
#: Characters in ``sub``.
MAX_SUB = 128
#: Room names in a ``rooms`` claim.
MAX_ROOM_CLAIMS = 1000
#: Roles in a ``roles`` claim, and characters in one.
MAX_ROLES = 32
MAX_ROLE = 64
#: Bytes of a ``--jwt-public-key`` file (a JWKS of a few dozen keys fits easily).
MAX_KEY_FILE = 1024 * 1024
#: Longest ``--ttl`` ``hubbub token`` mints (a year).
MAX_TTL = 366 * 86400

PUBLIC_ALGORITHMS = ("RS256", "ES256")
ENV_SECRET = "HUBBUB_JWT_SECRET"

SUB_RULE = f"'sub' is the user id, a string of 1-{MAX_SUB} characters"
ROLE_RULE = f"'roles' is a list of at most {MAX_ROLES} names of 1-{MAX_ROLE} characters"
ROOMS_RULE = f"'rooms' is '*' or a list of at most {MAX_ROOM_CLAIMS} room names ({p.ROOM_RULE})"


class TokenError(Exception):
    """A token that does not verify: ``code`` is the protocol's error code
    (``auth_failed`` or ``token_expired``), ``str(exc)`` the reason in words."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


Sub = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SUB, description=SUB_RULE)]
Role = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ROLE, description=ROLE_RULE)]


class Claims(msgspec.Struct):
    """The claims hubbub reads (others, such as ``iat`` or ``jti``, are ignored)."""

    sub: Sub
    name: p.Nick | None = None
    rooms: (
        Literal["*"]
        | Annotated[
            list[p.RoomName], msgspec.Meta(max_length=MAX_ROOM_CLAIMS, description=ROOMS_RULE)
        ]
        | None
    ) = None
    roles: Annotated[list[Role], msgspec.Meta(max_length=MAX_ROLES, description=ROLE_RULE)] = []
    exp: float | None = None


_RULES = {
    "sub": SUB_RULE,
    "name": f"'name' is the nickname: {p.NICK_RULE}",
    "rooms": ROOMS_RULE,
    "roles": ROLE_RULE,
    "exp": "'exp' is a number of seconds since the epoch",
}
_FIELD = re.compile(r"at `\$\.(\w+)")


def claims_of(payload: Mapping[str, Any]) -> Claims:
    """The payload's claims, checked; :class:`TokenError` with the rule broken."""
    try:
        return msgspec.convert(payload, Claims)
    except msgspec.ValidationError as exc:
        m = _FIELD.search(str(exc))
        missing = "missing required field `sub`" in str(exc)
        rule = _RULES["sub"] if missing else _RULES.get(m.group(1) if m else "", str(exc))
        raise TokenError(p.E_AUTH_FAILED, f"invalid token claims: {rule}") from None


def identity_of(claims: Claims) -> Identity:
    rooms = claims.rooms
    return Identity(
        user=claims.sub,
        name=claims.name,
        rooms=None if rooms is None or rooms == "*" or "*" in rooms else frozenset(rooms),
        roles=frozenset(claims.roles),
        expires=claims.exp,
    )


# -- keys ----------------------------------------------------------------------


def _public_algorithm(key: Any) -> str:
    """The one algorithm a public key verifies, or StartupError."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key of {key.key_size} bits (at least {MIN_RSA_BITS})")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"an EC key on {key.curve.name} (ES256 needs P-256)")
        return "ES256"
    raise ValueError(f"a {type(key).__name__} (only RSA for RS256 and P-256 for ES256)")


def load_public_keys(path: str) -> dict[str | None, tuple[Any, str]]:
    """The verification keys of ``--jwt-public-key``: ``kid -> (key, algorithm)``.

    A PEM public key is one key under ``None`` (used whatever the token's
    ``kid``); a JWKS gives each key under its ``kid`` (keys without one, or
    for encryption, or of other types, are skipped). StartupError, in one
    line, when the file cannot be read or holds no usable key.
    """
    where = f"--jwt-public-key {path}"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise StartupError(f"cannot read {where}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise StartupError(f"{where} is larger than {MAX_KEY_FILE} bytes: not a key file")
    if data.lstrip().startswith(b"{"):
        return _load_jwks(data, where)
    if b"PRIVATE KEY" in data:
        raise StartupError(
            f"{where} is a private key: give the server the public key "
            "(openssl pkey -in KEY -pubout) and keep the private one for minting"
        )
    try:
        key = serialization.load_pem_public_key(data)
        return {None: (key, _public_algorithm(key))}
    except ValueError as exc:
        raise StartupError(
            f"{where} is not a usable PEM public key or JWKS: {exc}".rstrip(".")
        ) from None
    except Exception as exc:  # cryptography's own errors for odd input
        raise StartupError(f"{where} is not a PEM public key or JWKS ({exc})") from None


def _load_jwks(data: bytes, where: str) -> dict[str | None, tuple[Any, str]]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise StartupError(f"{where} looks like JSON but does not parse") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise StartupError(f"{where}: a JWKS is an object with a 'keys' list")
    keys: dict[str | None, tuple[Any, str]] = {}
    for entry in doc["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            jwk = jwt.PyJWK.from_dict(entry)
            algorithm = _public_algorithm(jwk.key)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        if entry.get("alg") not in (None, algorithm):
            continue
        keys[entry["kid"]] = (jwk.key, algorithm)
    if not keys:
        raise StartupError(
            f"{where}: the JWKS holds no usable key (each needs a 'kid' and must be "
            "RSA >= 2048 bits for RS256 or EC P-256 for ES256)"
        )
    return keys


class Verifier:
    """Checks connection tokens against the server's keys (see the module's rules)."""

    def __init__(
        self,
        secret: str = "",
        public_keys: dict[str | None, tuple[Any, str]] | None = None,
        *,
        audience: str = "",
        issuer: str = "",
        leeway: float = LEEWAY,
    ) -> None:
        self.secret = secret.encode()
        self.public_keys = public_keys or {}
        self.audience = audience or None
        self.issuer = issuer or None
        self.leeway = leeway
        accepted = (["HS256"] if secret else []) + sorted(
            {alg for _, alg in self.public_keys.values()}
        )
        self.accepted = tuple(accepted)

    @classmethod
    def from_settings(cls, settings: Any, env: Mapping[str, str] | None = None) -> Verifier | None:
        """The verifier the settings describe, None without any key; StartupError for
        a short secret, an unusable key file, or ``auth`` token/optional without a key."""
        env = os.environ if env is None else env
        secret = settings.jwt_secret or env.get(ENV_SECRET, "")
        if secret and len(secret.encode()) < MIN_SECRET:
            raise StartupError(
                f"the JWT secret (--jwt-secret or ${ENV_SECRET}) has "
                f"{len(secret.encode())} bytes; use at least {MIN_SECRET} random bytes, "
                'e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"'
            )
        keys = load_public_keys(settings.jwt_public_key) if settings.jwt_public_key else None
        if not secret and not keys:
            if settings.auth != "none":
                raise StartupError(
                    f"--auth {settings.auth} needs a key to verify tokens: "
                    f"--jwt-secret (or ${ENV_SECRET}) or --jwt-public-key FILE"
                )
            return None
        return cls(
            secret,
            keys,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )

    def _key_for(self, token: str) -> tuple[Any, str]:
        try:
            header = jwt.get_unverified_header(token)
        except Exception:  # any malformed header: never a traceback
            raise TokenError(p.E_AUTH_FAILED, "malformed token (not a signed JWT)") from None
        alg = header.get("alg")
        if alg == "HS256" and self.secret:
            return self.secret, alg
        if alg in PUBLIC_ALGORITHMS and self.public_keys:
            kid = header.get("kid")
            found = self.public_keys.get(None)
            if found is None:
                if not isinstance(kid, str) or kid not in self.public_keys:
                    raise TokenError(
                        p.E_AUTH_FAILED, "the token's 'kid' names no key of this server"
                    )
                found = self.public_keys[kid]
            if found[1] == alg:
                return found
        shown = alg if isinstance(alg, str) and len(alg) <= 16 else "?"
        raise TokenError(
            p.E_AUTH_FAILED,
            f"algorithm {shown!r} is not accepted here (accepted: {', '.join(self.accepted)})",
        )

    def verify(self, token: str) -> Identity:
        """The identity a token proves, or :class:`TokenError`."""
        if not token or len(token) > p.MAX_TOKEN:
            raise TokenError(p.E_AUTH_FAILED, f"a token is 1-{p.MAX_TOKEN} characters")
        key, alg = self._key_for(token)
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": ["sub"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise TokenError(p.E_TOKEN_EXPIRED, "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenError(p.E_AUTH_FAILED, "the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise TokenError(p.E_AUTH_FAILED, "the token is not for this server (aud)") from None
        except jwt.InvalidIssuerError:
            raise TokenError(p.E_AUTH_FAILED, "the token's issuer is not trusted (iss)") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(p.E_AUTH_FAILED, f"the token has no '{exc.claim}' claim") from None
        except jwt.InvalidSignatureError:
            raise TokenError(p.E_AUTH_FAILED, "the token's signature does not verify") from None
        except jwt.PyJWTError:
            raise TokenError(p.E_AUTH_FAILED, "malformed or invalid token") from None
        except Exception:  # deep JSON, odd numbers: a refusal, never a traceback
            raise TokenError(p.E_AUTH_FAILED, "malformed token") from None
        if not isinstance(payload, dict):
            raise TokenError(p.E_AUTH_FAILED, "malformed token (claims are not an object)")
        return identity_of(claims_of(payload))


# -- minting (``hubbub token``) ---------------------------------------------------

_TTL = re.compile(r"([0-9]{1,9})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """Seconds of a ``--ttl`` such as ``90s``, ``30m``, ``1h``, ``7d``; ValueError."""
    m = _TTL.fullmatch(text.strip())
    seconds = int(m.group(1)) * _UNITS[m.group(2)] if m else 0
    if not 0 < seconds <= MAX_TTL:
        raise ValueError(f"--ttl must be like 90s, 30m, 1h or 7d, at most {MAX_TTL // 86400}d")
    return seconds


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def thumbprint(key: Any) -> str:
    """RFC 7638 JWK thumbprint of a public key: the ``kid`` minted tokens carry
    (a JWKS listing the key under that ``kid`` picks it)."""
    jwk = _to_jwk(key)
    members = ("e", "kty", "n") if jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _to_jwk(key: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPublicKey):
        return dict(jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True))
    return dict(jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True))


def mint(
    key: Any,
    sub: str,
    *,
    algorithm: str = "HS256",
    name: str | None = None,
    rooms: list[str] | None = None,
    roles: list[str] | None = None,
    ttl: float | None = 3600,
    audience: str | None = None,
    issuer: str | None = None,
    kid: str | None = None,
    now: float | None = None,
) -> str:
    """A signed token; its claims are checked by the same rules the server applies
    (ValueError with the rule)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "iat": issued}
    if ttl is not None:
        claims["exp"] = issued + int(ttl)
    if name is not None:
        claims["name"] = name
    if rooms is not None:
        claims["rooms"] = "*" if rooms == ["*"] else rooms
    if roles:
        claims["roles"] = roles
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    try:
        claims_of(claims)
    except TokenError as exc:
        raise ValueError(exc.reason) from None
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def _signing_key(args: argparse.Namespace) -> tuple[Any, str, str | None]:
    if args.private_key:
        try:
            data = Path(args.private_key).read_bytes()
            key = serialization.load_pem_private_key(data, password=None)
        except OSError as exc:
            raise ValueError(
                f"cannot read --private-key {args.private_key}: {exc.strerror}"
            ) from None
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"--private-key {args.private_key}: not a PEM private key ({exc})"
            ) from None
        algorithm = _public_algorithm(key.public_key())
        return key, algorithm, thumbprint(key.public_key())
    secret = args.secret or os.environ.get(ENV_SECRET, "")
    if not secret:
        raise ValueError(f"give --secret, --private-key, or ${ENV_SECRET}")
    if len(secret.encode()) < MIN_SECRET:
        raise ValueError(
            f"--secret must have at least {MIN_SECRET} bytes (the server refuses less)"
        )
    return secret, "HS256", None


def mint_from_args(args: argparse.Namespace) -> int:
    """``hubbub token``: print a token; a bad flag is one line on stderr, status 2."""
    try:
        key, algorithm, kid = _signing_key(args)
        token = mint(
            key,
            args.sub,
            algorithm=algorithm,
            name=args.name,
            rooms=_split(args.rooms),
            roles=_split(args.roles),
            ttl=parse_ttl(args.ttl),
            audience=args.audience,
            issuer=args.issuer,
            kid=kid,
        )
    except ValueError as exc:
        sys.stderr.write(f"hubbub token: error: {exc}\n")
        return 2
    print(token)
    return 0

"""Token verification and minting (hubbub.auth.tokens): algorithms pinned by the
key, time claims, audience/issuer, bounded claims, one-line start-up errors."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pytest

from hubbub import protocol as p
from hubbub.auth.tokens import (
    MAX_ROOM_CLAIMS,
    TokenError,
    Verifier,
    load_public_keys,
    mint,
    parse_ttl,
    thumbprint,
)
from hubbub.errors import StartupError

from .keys import SECRET, ec_key, jwks, private_pem, public_pem, rsa_key, token


def _short(i: int) -> str:
    """A distinct room name of 1-2 characters (1001 of them still fit in a token)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    return digits[i // 36] + digits[i % 36] if i >= 36 else digits[i]


def refused(verifier: Verifier, tok: str) -> TokenError:
    with pytest.raises(TokenError) as info:
        verifier.verify(tok)
    return info.value


def settings(**kw: Any) -> Any:
    base = dict(auth="token", jwt_secret="", jwt_public_key="", jwt_audience="", jwt_issuer="")
    return SimpleNamespace(**{**base, **kw})


def test_hs256_claims_become_an_identity() -> None:
    v = Verifier(SECRET)
    ident = v.verify(token(name="Ann", rooms=["lobby", "dev"], roles=["admin"]))
    assert ident.user == "ann" and ident.name == "Ann"
    assert ident.rooms == frozenset({"lobby", "dev"}) and ident.admin
    assert ident.expires is not None and ident.expires > time.time()
    assert v.verify(token(rooms="*")).rooms is None
    assert v.verify(token()).rooms is None


def test_a_token_without_exp_is_accepted_and_never_expires() -> None:
    assert Verifier(SECRET).verify(token(ttl=None)).expires is None


def test_rs256_and_es256_with_pem_public_keys(tmp_path: Path) -> None:
    rk, ek = rsa_key(), ec_key()
    rv = Verifier(public_keys=load_public_keys(public_pem(rk, tmp_path / "r.pem")))
    ev = Verifier(public_keys=load_public_keys(public_pem(ek, tmp_path / "e.pem")))
    assert rv.verify(token(rk, "RS256")).user == "ann"
    assert ev.verify(token(ek, "ES256")).user == "ann"
    # A token signed by another key of the same kind does not verify.
    assert "signature" in refused(rv, token(rsa_key(), "RS256")).reason
    # Nor one of the other kind.
    assert "not accepted" in refused(rv, token(ek, "ES256")).reason


def test_jwks_picks_the_key_by_kid(tmp_path: Path) -> None:
    one, two = rsa_key(), ec_key()
    v = Verifier(public_keys=load_public_keys(jwks(tmp_path / "k.json", one=one, two=two)))
    assert v.verify(token(one, "RS256", kid="one")).user == "ann"
    assert v.verify(token(two, "ES256", kid="two")).user == "ann"
    # A kid the set does not have, no kid, or the right kid with another key's signature.
    assert "kid" in refused(v, token(one, "RS256", kid="three")).reason
    assert "kid" in refused(v, token(one, "RS256")).reason
    assert "signature" in refused(v, token(rsa_key(), "RS256", kid="one")).reason


@pytest.mark.parametrize(
    ("claims", "code", "words"),
    [
        ({"exp": int(time.time()) - 60}, p.E_TOKEN_EXPIRED, "expired"),
        ({"nbf": int(time.time()) + 600}, p.E_AUTH_FAILED, "not valid yet"),
        ({"aud": "other"}, p.E_AUTH_FAILED, "aud"),
        ({"iss": "mallory"}, p.E_AUTH_FAILED, "iss"),
    ],
)
def test_time_audience_and_issuer_claims(claims: dict[str, Any], code: str, words: str) -> None:
    v = Verifier(SECRET, audience="hubbub", issuer="corp")
    base = {"aud": "hubbub", "iss": "corp"}
    assert v.verify(token(**base)).user == "ann"
    err = refused(v, token(**{**base, **claims}))
    assert err.code == code and words in err.reason


def test_missing_aud_or_iss_is_refused_when_the_server_sets_them() -> None:
    v = Verifier(SECRET, audience="hubbub", issuer="corp")
    assert refused(v, token(iss="corp")).code == p.E_AUTH_FAILED
    assert refused(v, token(aud="hubbub")).code == p.E_AUTH_FAILED


def test_leeway_is_small() -> None:
    v = Verifier(SECRET)
    assert v.verify(token(exp=int(time.time()) - 2)).user == "ann"  # within 5 s of skew
    assert refused(v, token(exp=int(time.time()) - 30)).code == p.E_TOKEN_EXPIRED


def _b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_alg_none_and_algorithm_confusion_are_refused(tmp_path: Path) -> None:
    rk = rsa_key()
    pem = public_pem(rk, tmp_path / "r.pem")
    v = Verifier(public_keys=load_public_keys(pem))
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'ann'})}."
    assert refused(v, unsigned).code == p.E_AUTH_FAILED
    assert refused(Verifier(SECRET), unsigned).code == p.E_AUTH_FAILED
    # HS256 signed with the public key's PEM bytes as the secret (the classic
    # confusion attack): an RS server never checks HS tokens.
    import hmac as _hmac
    from hashlib import sha256

    head = _b64({"alg": "HS256", "typ": "JWT"})
    body = _b64({"sub": "mallory", "exp": int(time.time()) + 60})
    sig = _hmac.new(Path(pem).read_bytes(), f"{head}.{body}".encode(), sha256).digest()
    forged = f"{head}.{body}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"
    err = refused(v, forged)
    assert err.code == p.E_AUTH_FAILED and "HS256" in err.reason
    # With both a secret and a public key, the HS token is checked with the secret only.
    both = Verifier(SECRET, load_public_keys(pem))
    assert "signature" in refused(both, forged).reason


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        ({"sub": ""}, "'sub'"),
        ({"sub": "x" * 129}, "'sub'"),
        ({"sub": 42}, "malformed"),
        ({"name": "Ann Smith"}, "nickname"),
        ({"name": "x" * 40}, "nickname"),
        ({"rooms": ["ok", "bad room"]}, "'rooms'"),
        ({"rooms": [_short(i) for i in range(MAX_ROOM_CLAIMS + 1)]}, "'rooms'"),
        ({"rooms": "lobby"}, "'rooms'"),
        ({"roles": ["x" * 65]}, "'roles'"),
    ],
)
def test_bad_claims_are_refused_with_the_rule(claims: dict[str, Any], words: str) -> None:
    err = refused(Verifier(SECRET), token(**claims))
    assert err.code == p.E_AUTH_FAILED and words in err.reason


def test_no_sub_is_refused() -> None:
    tok = jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert "'sub'" in refused(Verifier(SECRET), tok).reason


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "x" * (p.MAX_TOKEN + 1),
        "a.b",
        "....",
        _b64("[" * 5000) + "." + _b64({}) + ".x",
        _b64({"alg": "HS256"}) + "." + base64.urlsafe_b64encode(b"[" * 3000).decode() + ".x",
    ],
)
def test_garbage_is_refused_not_raised(junk: str) -> None:
    assert refused(Verifier(SECRET), junk).code == p.E_AUTH_FAILED


def test_deeply_nested_claims_with_a_valid_signature_are_refused() -> None:
    head = _b64({"alg": "HS256", "typ": "JWT"})
    body = base64.urlsafe_b64encode(b'{"sub":"a","x":' + b"[" * 3000 + b"]" * 3000 + b"}")
    body_s = body.rstrip(b"=").decode()
    import hmac as _hmac
    from hashlib import sha256

    sig = _hmac.new(SECRET.encode(), f"{head}.{body_s}".encode(), sha256).digest()
    tok = f"{head}.{body_s}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"
    assert len(tok) <= p.MAX_TOKEN
    assert refused(Verifier(SECRET), tok).code == p.E_AUTH_FAILED


def test_start_up_rules(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="at least 32"):
        Verifier.from_settings(settings(jwt_secret="short"), env={})
    with pytest.raises(StartupError, match="at least 32"):
        Verifier.from_settings(settings(), env={"HUBBUB_JWT_SECRET": "short"})
    with pytest.raises(StartupError, match="needs a key"):
        Verifier.from_settings(settings(auth="optional"), env={})
    assert Verifier.from_settings(settings(auth="none"), env={}) is None
    v = Verifier.from_settings(settings(), env={"HUBBUB_JWT_SECRET": SECRET})
    assert v is not None and v.verify(token()).user == "ann"
    key = rsa_key()
    with pytest.raises(StartupError, match="private key"):
        Verifier.from_settings(
            settings(jwt_public_key=private_pem(key, tmp_path / "p.pem")), env={}
        )
    small = __import__(
        "cryptography.hazmat.primitives.asymmetric.rsa", fromlist=["x"]
    ).generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(StartupError, match="1024 bits"):
        load_public_keys(public_pem(small, tmp_path / "small.pem"))
    with pytest.raises(StartupError, match="cannot read"):
        load_public_keys(str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(StartupError, match="not"):
        load_public_keys(str(tmp_path / "junk.pem"))
    (tmp_path / "empty.json").write_text('{"keys": [{"kty": "oct", "k": "abc", "kid": "x"}]}')
    with pytest.raises(StartupError, match="no usable key"):
        load_public_keys(str(tmp_path / "empty.json"))
    for err in (StartupError,):
        with pytest.raises(err):
            load_public_keys(str(tmp_path))  # a directory


def test_mint_round_trips_and_checks_its_claims(tmp_path: Path) -> None:
    tok = mint(SECRET, "bob", name="Bob", rooms=["dev"], roles=["admin"], ttl=60)
    ident = Verifier(SECRET).verify(tok)
    assert (ident.user, ident.name, ident.rooms, ident.admin) == ("bob", "Bob", {"dev"}, True)
    with pytest.raises(ValueError, match="nickname"):
        mint(SECRET, "bob", name="not a nick")
    key = ec_key()
    kid = thumbprint(key.public_key())
    v = Verifier(public_keys=load_public_keys(jwks(tmp_path / "k.json", **{kid: key})))
    assert v.verify(mint(key, "cat", algorithm="ES256", kid=kid)).user == "cat"


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600), ("7d", 604800), ("45", 45)]
)
def test_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-1h", "1y", "1h30m", "999d", "1e9"])
def test_bad_ttl(text: str) -> None:
    with pytest.raises(ValueError, match="--ttl"):
        parse_ttl(text)

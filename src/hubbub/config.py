"""Server settings: every limit hubbub enforces, in one place.

Each field documents what it bounds and what it costs, and is one key of the
settings schema (:mod:`hubbub.config_file`): a ``hubbub serve`` flag
(``max_message_size`` -> ``--max-message-size``), an environment variable
(``HUBBUB_MAX_MESSAGE_SIZE``) and a key of the ``--config`` TOML file, with
flags > environment > file > defaults. ``deploy/hubbub.toml`` lists them all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .transport.forwarded import FORWARDED_HEADERS, proxies
from .transport.guard import parse_allowed
from .transport.hosts import parse_allowed_hosts

KiB = 1024
MiB = 1024 * KiB

#: SQLite's synchronous modes (https://sqlite.org/pragma.html#pragma_synchronous).
SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
#: The values of ``auth`` and ``log_format``.
AUTH_MODES = ("none", "token", "optional")
LOG_FORMATS = ("text", "json")


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True, slots=True)
class Settings:
    """Limits and timeouts of one hubbub server.

    Memory a connection can pin is roughly ``max_message_size`` (a message
    being received) plus ``max_send_buffer`` (frames queued for a slow reader)
    plus, with compression, about 70 KiB of zlib state.
    """

    max_message_size: int = _doc(
        "Largest incoming WebSocket message in bytes, after decompression. "
        "A bigger message closes the connection with 1009. Bounds the memory "
        "used to assemble one message.",
        default=64 * KiB,
    )
    max_send_buffer: int = _doc(
        "Bytes that may wait in one connection's outgoing buffer. A client that "
        "reads slower than it is sent to and exceeds this is dropped with close "
        "code 1013 and a log line, so it never slows the others.",
        default=1 * MiB,
    )
    max_connections: int = _doc(
        "Open WebSocket connections the server accepts; further handshakes get "
        "HTTP 503. Each idle connection costs a few KiB.",
        default=10_000,
    )
    ping_interval: float = _doc(
        "Seconds of silence from a client after which the server pings it "
        "(0 disables the heartbeat).",
        default=20.0,
    )
    ping_timeout: float = _doc(
        "Seconds a pinged client has to answer (with a pong or any frame) "
        "before it is dropped with close code 1011.",
        default=20.0,
    )
    handshake_timeout: float = _doc(
        "Seconds a new TCP connection has to send a complete HTTP request head; "
        "slower ones get HTTP 408. Also the idle timeout of keep-alive HTTP "
        "connections.",
        default=10.0,
    )
    close_timeout: float = _doc(
        "Seconds to wait for the peer during a closing handshake (and for a "
        "dropped slow client to drain) before the TCP connection is aborted.",
        default=5.0,
    )
    shutdown_timeout: float = _doc(
        "Seconds a graceful shutdown waits for clients to finish the closing "
        "handshake (close code 1001) before aborting the rest.",
        default=3.0,
    )
    compression: bool = _doc(
        "Negotiate permessage-deflate (RFC 7692) when a client offers it. "
        "Costs about 70 KiB of zlib state per compressed connection; the "
        "decompressed size is capped by max_message_size.",
        default=True,
    )
    max_header_size: int = _doc(
        "Largest HTTP request head (request line and headers) in bytes; bigger ones get HTTP 431.",
        default=16 * KiB,
    )
    max_body_size: int = _doc(
        "Largest HTTP request body in bytes; bigger ones get HTTP 413.",
        default=1 * MiB,
    )
    max_pending_messages: int = _doc(
        "Messages from one connection that may wait for an async message "
        "handler; beyond this the server stops reading from that socket "
        "until the handler catches up (TCP backpressure).",
        default=64,
    )
    max_connections_per_ip: int = _doc(
        "TCP connections (HTTP and WebSocket) one client address may hold; more are "
        "answered 503 and closed before their request is read. 0 disables. 256 leaves room "
        "for an office or a campus behind one NAT address (a browser tab holds one "
        "WebSocket) while one address can hold at most 256 x (max_send_buffer + "
        "max_message_size), about 272 MiB with the defaults. Addresses in "
        "unlimited_addresses are not limited.",
        default=256,
    )
    max_pending_handshakes: int = _doc(
        "TCP connections, across the server, that have not sent a complete HTTP request "
        "head yet (slowloris); beyond this new connections get a 503 and are closed at "
        "once. Each costs a few KiB (up to max_header_size while its head arrives); "
        "handshake_timeout bounds how long one may stay. 0 disables.",
        default=1024,
    )
    max_pending_handshakes_per_ip: int = _doc(
        "The same, per client address (so one address cannot take all of "
        "max_pending_handshakes). 0 disables.",
        default=64,
    )
    unlimited_addresses: str = _doc(
        "Client addresses the per-address limits do not apply to, comma- or "
        "space-separated: a reverse proxy (every client then has its address) or a "
        "local load test. Empty: every address is limited.",
        default="127.0.0.1,::1",
    )
    allowed_origins: str = _doc(
        "Origins (scheme://host[:port], comma- or space-separated) whose pages may "
        "open a WebSocket or send a POST/PUT/DELETE here, besides the server's own "
        "(the Host the request came to, https over TLS); '*' allows every origin. "
        "A request from another origin gets 403; requests without Origin (programs, "
        "not browser pages) are allowed. Behind a TLS-terminating proxy, list the "
        "public https:// origin.",
        default="",
    )
    allowed_hosts: str = _doc(
        "Host names this server answers (comma- or space-separated; '.example.com' also "
        "matches its subdomains; '*' any name). A request for another Host gets 421, "
        "before any handler: a page whose name an attacker re-points at this server's "
        "address (DNS rebinding) is then not same-origin with it. localhost and IP "
        "addresses are always answered. Empty: any name, except on a connection that "
        "reached a loopback address directly (not from a proxy of forwarded_allow_ips): "
        "there a DNS name (one with a dot) gets 421. List the names before exposing "
        "hubbub (docs/security.md).",
        default="",
    )
    forwarded_allow_ips: str = _doc(
        "Addresses or networks (CIDR) of the reverse proxies in front of hubbub, comma- "
        "or space-separated. For connections from them, the client's address is taken "
        "from forwarded_header (the right-most address that is not one of them): the "
        "per-address limits, the access log, the admin page and connection_info use it. "
        "Empty: trust no proxy (every client is its TCP peer).",
        default="",
    )
    forwarded_header: str = _doc(
        "The header the proxies of forwarded_allow_ips name the client in: "
        "'x-forwarded-for' (nginx, HAProxy's option forwardfor) or 'forwarded' (RFC 7239, "
        "HAProxy's option forwarded). Only this one is read: a proxy passes the other on "
        "as the client wrote it.",
        default="x-forwarded-for",
    )
    certfile: str = _doc(
        "PEM certificate chain: serve HTTPS and WSS on the port (with keyfile).",
        default="",
    )
    keyfile: str = _doc(
        "PEM private key of certfile (may be the same file).",
        default="",
    )
    task_workers: int = _doc(
        "Worker processes for server.task() (Swoole's task workers), started on first use.",
        default=2,
    )
    access_log: bool = _doc(
        "Log one line per HTTP request at INFO on the 'hubbub.access' logger: "
        "client address, method, path (no query string), status, body bytes and "
        "milliseconds; a WebSocket handshake is a 101 line.",
        default=True,
    )
    gc_freeze: bool = _doc(
        "Once listening, move every object alive (modules, the app) out of the cyclic "
        "garbage collector's reach (gc.freeze): later collections no longer scan them, "
        "which shortens the pauses they cause (the latency tail). Only Server.start() "
        "(hubbub serve) does this.",
        default=True,
    )

    # -- the chat product (hubbub.v1) ----------------------------------------
    db: str = _doc(
        "SQLite file holding room history (created on first start; ':memory:' keeps nothing).",
        default="hubbub.db",
    )
    store: str = _doc(
        "History store URL: empty for the SQLite file of --db (one node), "
        "sqlite:///PATH, or postgresql://USER@HOST[:PORT]/DB[?schema=NAME] "
        "(shared by several nodes).",
        default="",
    )
    broker: str = _doc(
        "Fan-out between nodes: 'local' (one node) or "
        "redis://HOST[:PORT][/DB][?prefix=P][&wire=1] (several nodes on one store).",
        default="local",
    )
    sqlite_synchronous: str = _doc(
        "SQLite synchronous mode: NORMAL survives kill -9 of the server, FULL "
        "also survives power loss (one fsync per group commit).",
        default="NORMAL",
    )
    retention_count: int = _doc(
        "Messages kept per room (older ones are deleted); 0 keeps all.",
        default=100_000,
    )
    retention_days: float = _doc(
        "Days a message is kept; 0 keeps messages forever.",
        default=0.0,
    )
    rate: float = _doc(
        "hubbub.v1 frames per second one connection may send (token bucket "
        "refill); excess frames get an error frame 'rate_limited'. 0 disables.",
        default=20.0,
    )
    burst: float = _doc(
        "hubbub.v1 frames one connection may send in a burst (bucket size).",
        default=40.0,
    )
    max_rooms_per_connection: int = _doc(
        "Rooms one hubbub.v1 connection may be in at once.",
        default=50,
    )
    max_rooms: int = _doc(
        "Rooms the server holds; a join or HTTP post that would create one more is "
        "refused ('room_limit', HTTP 507). 0: no limit.",
        default=10_000,
    )
    room_create_rate: float = _doc(
        "New rooms per second one connection may create (token bucket refill); more "
        "get 'rate_limited'. 0 disables.",
        default=0.2,
    )
    room_create_burst: float = _doc(
        "New rooms one connection may create in a burst (bucket size).",
        default=5.0,
    )
    max_invalid_frames: int = _doc(
        "Invalid hubbub.v1 frames (bad JSON, bad or unknown frame, binary) one "
        "connection may send in a burst; refilled at max_invalid_frames per "
        "invalid_frame_window seconds; beyond it the connection is closed with 1008. "
        "0 disables.",
        default=10,
    )
    invalid_frame_window: float = _doc(
        "Seconds (at least 1) in which max_invalid_frames invalid frames are forgiven again.",
        default=60.0,
    )
    max_resume: int = _doc(
        "Missed messages replayed on a resume; a client further behind is told "
        "to reload ('reset' frame, reason 'too_far').",
        default=10_000,
    )
    max_journal_queue: int = _doc(
        "Messages waiting to be written; beyond this, sends are refused with "
        "'unavailable' (the client retries) instead of queueing without bound.",
        default=50_000,
    )
    seed_rate: float = _doc(
        "Messages per second one plain (seed protocol) client may send; each message "
        "makes the server send 1 + the number of plain clients, so without a limit one "
        "client makes the server send many times what it sends. Excess messages are "
        "dropped and the sender gets 'server: rate limited'. 0 (the default) keeps the "
        "seed's behaviour: no limit.",
        default=0.0,
    )
    seed_burst: float = _doc(
        "Plain-client messages allowed in a burst when seed_rate is set (bucket size).",
        default=10.0,
    )
    api_key: str = _doc(
        "Key for POST /api/rooms/{room}/messages (Authorization: Bearer KEY); "
        "empty disables publishing over HTTP. Also read from HUBBUB_API_KEY.",
        default="",
    )

    # -- identity (docs/security.md) -------------------------------------------
    auth: str = _doc(
        "Who may connect with hubbub.v1: 'none' (anyone, any nickname: the seed's open "
        "room), 'token' (every hubbub.v1 connection presents a signed token, see "
        "jwt_secret / jwt_public_key) or 'optional' (a token makes a user; without one "
        "a guest gets a guest-<n> nickname, read-only unless guest_write).",
        default="none",
    )
    jwt_secret: str = _doc(
        "Shared secret of HS256 connection tokens (also read from HUBBUB_JWT_SECRET). "
        "At least 32 bytes.",
        default="",
    )
    jwt_public_key: str = _doc(
        "File with the PEM public key (RS256/ES256) or a JWKS of the keys that sign "
        "connection tokens.",
        default="",
    )
    jwt_audience: str = _doc(
        "Required 'aud' claim of connection tokens (empty: not checked).",
        default="",
    )
    jwt_issuer: str = _doc(
        "Required 'iss' claim of connection tokens (empty: not checked).",
        default="",
    )
    allow_anonymous_seed: bool = _doc(
        "With auth=token: still let plain WebSocket clients (no hubbub.v1) into the "
        "seed's open room. Off: they get HTTP 401 with a reason.",
        default=False,
    )
    guest_write: bool = _doc(
        "With auth=optional: guests (no token) may send messages, not only read.",
        default=False,
    )
    auth_timeout: float = _doc(
        "Seconds a connection that must authenticate has to send its auth frame "
        "before it is closed (close code 4401).",
        default=10.0,
    )

    # -- fallback transports (docs/transports.md) -------------------------------
    poll_timeout: float = _doc(
        "Seconds a long-poll request waits for frames before it answers empty "
        "(keep it below the proxies' read timeouts). Sessions of the HTTP fallback "
        "transports (SSE, long polling) that stop polling are dropped after "
        "ping_interval + ping_timeout, like silent WebSocket clients.",
        default=25.0,
    )

    # -- operations ---------------------------------------------------------
    metrics_token: str = _doc(
        "Bearer token that GET /metrics requires (also read from "
        "HUBBUB_METRICS_TOKEN). Empty and no metrics_port: /metrics is off.",
        default="",
    )
    metrics_port: int = _doc(
        "Serve /metrics (Prometheus text format) on this separate port, bound to the "
        "same host (0: not on a separate port).",
        default=0,
    )
    log_format: str = _doc(
        "Log lines as 'text' (for people) or 'json' (one object per line, for log pipelines).",
        default="text",
    )
    workers: int = _doc(
        "Processes serving the port (SO_REUSEPORT) under one supervising parent that "
        "restarts a dead one. More than 1 needs a shared store and broker "
        "(postgresql:// and redis://).",
        default=1,
    )

    def with_overrides(self, **changes: Any) -> Settings:
        """Return a copy with the given fields changed (unknown names raise)."""
        return replace(self, **changes)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = _TYPES[str(f.type)]
            if kind is bool:
                if not isinstance(value, bool):
                    raise SettingError(f.name, f"must be true or false, got {value!r}")
                continue
            if kind is str:
                if not isinstance(value, str):
                    raise SettingError(f.name, f"must be a string, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingError(f.name, f"must be a number, got {value!r}")
            if kind is int and not isinstance(value, int):
                raise SettingError(f.name, f"must be a whole number, got {value!r}")
            if not math.isfinite(value):
                raise SettingError(f.name, f"must be a finite number, got {value!r}")
            if value < 0:
                raise SettingError(f.name, f"must not be negative, got {value!r}")
        for name in ("max_message_size", "max_send_buffer", "max_header_size"):
            if getattr(self, name) < 1:
                raise SettingError(name, "must be positive")
        mode = self.sqlite_synchronous.upper()
        if mode not in SQLITE_SYNCHRONOUS:
            raise SettingError(
                "sqlite_synchronous",
                f"must be one of {', '.join(SQLITE_SYNCHRONOUS)}, got {self.sqlite_synchronous!r}",
            )
        object.__setattr__(self, "sqlite_synchronous", mode)
        if not self.db:
            raise SettingError("db", "must name a file (or ':memory:')")
        if bool(self.certfile) != bool(self.keyfile):
            missing = "keyfile" if self.certfile else "certfile"
            raise SettingError(missing, "is needed too (TLS needs certfile and keyfile)")
        for name, choices in (
            ("auth", AUTH_MODES),
            ("log_format", LOG_FORMATS),
        ):
            if getattr(self, name) not in choices:
                raise SettingError(
                    name, f"must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        if self.workers < 1:
            raise SettingError("workers", "must be at least 1")
        try:
            parse_allowed(self.allowed_origins)
        except ValueError as exc:
            raise SettingError("allowed_origins", f"has {exc}") from None
        self._check_proxies()

    def _check_proxies(self) -> None:
        try:
            parse_allowed_hosts(self.allowed_hosts)
        except ValueError as exc:
            raise SettingError("allowed_hosts", f"has {exc}") from None
        if self.forwarded_header not in FORWARDED_HEADERS:
            raise SettingError(
                "forwarded_header",
                f"must be one of {', '.join(FORWARDED_HEADERS)}, got {self.forwarded_header!r}",
            )
        try:
            proxies(self.forwarded_allow_ips, self.forwarded_header)
        except ValueError as exc:
            raise SettingError("forwarded_allow_ips", f"has {exc}") from None


class SettingError(ValueError):
    """A setting has a value hubbub cannot run with.

    ``str(exc)`` reads ``max_message_size must be positive``; ``field`` is the
    setting's name, ``problem`` the rest (the CLI names the flag instead).
    """

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.field = name
        self.problem = problem


_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}


def setting_fields() -> list[tuple[str, type, Any, str]]:
    """(name, type, default, help) for each setting: the CLI is built from this."""
    out = []
    for f in fields(Settings):
        out.append((f.name, _TYPES[str(f.type)], f.default, f.metadata["help"]))
    return out

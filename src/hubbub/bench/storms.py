"""The storm scenarios: many clients joining one room at once, and reconnecting together.

*Join storm* (:func:`join_storm`): ``n`` clients connect at once (up to
``storm_concurrency`` handshakes in flight per generator process) and each
joins one room as soon as it is connected. Measured: the time from the first
connect until the last client has its ``room`` frame, the server's CPU
seconds over it, the generator's (to tell which side was the bottleneck);
then presence is checked: every client's last known member count must reach
``n`` (the time until it does is reported), and the member list walked with
``who`` must be exactly the ``n`` nicknames (no ghost, no missing member).
Against a seed-protocol server (the Node ws baseline) the same clients only
wait for their greeting.

*Reconnect storm* (:func:`reconnect_storm`): ``n`` clients in ``rooms`` rooms
receive ``history`` messages per room, the server is restarted (``restart``,
given by the caller, returns the new process id), ``missed`` more messages are
posted per room, then every client reconnects at once and resumes (``join``
with ``since`` and ``epoch``). Measured: the time until every client has its
``resumed``, server CPU; checked: no gap, no duplicate, a ``resumed`` that
matches the replay, nobody behind the room's newest message. Against a seed
server: the reconnect and the greeting only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import proc
from .generator import Generator
from .measure import Run, split
from .options import BenchError, Options

#: Handshakes in flight per generator process during a storm.
STORM_CONCURRENCY = 512


def _cpu(pid: int | None) -> float | None:
    return proc.cpu_seconds(pid) if pid is not None else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


async def _open(
    gen: Generator, opts: Options, rooms: list[str], n: int, resume: bool
) -> dict[str, Any]:
    """One storm_open on every worker; the merged answer plus server and generator CPU."""
    counts = split(n, gen.n)
    pid = opts.server_pid
    s0, g0, t0 = _cpu(pid), proc.cpu_seconds_many(gen.pids), time.monotonic()
    res = await gen.call(
        "storm_open",
        [
            {
                "url": opts.url,
                "protocol": opts.protocol,
                "rooms": rooms,
                "count": counts[w],
                "first": sum(counts[:w]),
                "concurrency": STORM_CONCURRENCY,
                "resume": resume,
            }
            for w in range(gen.n)
        ],
    )
    wall = time.monotonic() - t0
    s1, g1 = _cpu(pid), proc.cpu_seconds_many(gen.pids)
    seconds = [r["seconds"] for r in res if r["seconds"] is not None]
    return {
        "clients": sum(r["clients"] for r in res),
        "failed": sum(r["failed"] for r in res),
        "ready": sum(r["ready"] for r in res),
        "seconds": max(seconds) if seconds else None,
        "server_cpu_s": _diff(s0, s1),
        "generator_cpu_s": g1 - g0,
        "generator_cpu_pct": 100.0 * (g1 - g0) / (wall * gen.n) if wall > 0 else None,
        "errors": [e for r in res for e in r["errors"]],
    }


def _ready_errors(opened: dict[str, Any], n: int) -> list[str]:
    errors = list(dict.fromkeys(opened["errors"]))
    if opened["failed"]:
        errors.insert(0, f"{opened['failed']:,} of {n:,} connections failed")
    if opened["ready"] < n:
        errors.insert(0, f"only {opened['ready']:,} of {n:,} clients were ready")
    return errors


async def join_storm(opts: Options, n: int) -> dict[str, Any]:
    """``n`` clients join one room at once; see the module's docstring."""
    chat = opts.protocol == "hubbub.v1"
    room = f"{opts.room}-{os.urandom(3).hex()}"
    async with Generator(opts) as gen:
        run = Run(opts, gen, f"join storm {n:,}")
        run.show(f"{n:,} clients joining {room}")
        opened = await _open(gen, opts, [room], n, resume=False)
        errors = _ready_errors(opened, n)
        result: dict[str, Any] = {
            "scenario": "join_storm",
            "label": opts.label,
            "url": opts.url,
            "protocol": opts.protocol,
            "clients": n,
            "joined_s": opened["seconds"],
            "server_cpu_s": opened["server_cpu_s"],
            "generator_cpu_s": opened["generator_cpu_s"],
            "generator_cpu_pct": opened["generator_cpu_pct"],
            "ready": opened["ready"],
        }
        if chat:
            run.show("checking presence")
            result.update(await _presence(gen, room, n, errors))
            if result["converged_s"] is not None and opened["seconds"] is not None:
                result["converged_s"] += opened["seconds"]
        run.show("closing")
        await gen.call("storm_close", [{}] * gen.n)
    run.progress.end()
    result["errors"] = errors
    result["ok"] = not errors
    return result


async def _presence(gen: Generator, room: str, n: int, errors: list[str]) -> dict[str, Any]:
    """Presence converged? Every client's member count, and the ``who`` list, in ``room``."""
    counts = await gen.call("storm_counts", [{"expected": {room: n}}] * gen.n)
    off = sum(c["off"] for c in counts)
    if off:
        held = {k: v for c in counts for k, v in c["counts"].items()}
        errors.append(f"{off:,} clients never saw the member count {n:,} (they hold {held})")
    who = await gen.call("storm_who", [{"rooms": [room]}] + [{"rooms": []}] * (gen.n - 1))
    members = who[0]["members"][room]
    expected = {f"s{i}" for i in range(n)}
    got = set(members)
    missing, ghosts = len(expected - got), len(got - expected)
    repeated = len(members) - len(got)
    if missing or ghosts or repeated:
        errors.append(
            f"who lists {len(members):,} members: {missing:,} missing, {ghosts:,} ghosts, "
            f"{repeated:,} listed twice"
        )
    return {
        "converged_s": max(c["seconds"] for c in counts) if not off else None,
        "count_off": off,
        "who_members": len(members),
        "who_missing": missing,
        "who_ghosts": ghosts,
    }


Restart = Callable[[], Awaitable[int | None]]


async def reconnect_storm(
    opts: Options, n: int, rooms: int, history: int, missed: int, restart: Restart
) -> dict[str, Any]:
    """``n`` clients in ``rooms`` rooms resume after a server restart; see the docstring."""
    chat = opts.protocol == "hubbub.v1"
    tag = os.urandom(3).hex()
    names = [f"{opts.room}-{tag}-{k}" for k in range(rooms)]
    async with Generator(opts) as gen:
        run = Run(opts, gen, f"reconnect storm {n:,}")
        run.show(f"{n:,} clients joining {rooms} rooms")
        first = await _open(gen, opts, names, n, resume=False)
        errors = _ready_errors(first, n)
        if errors:
            raise BenchError("reconnect storm: the clients could not join: " + "; ".join(errors))
        if chat:
            run.show(f"posting {history} messages per room")
            await _post_and_sync(gen, opts, names, history)
        await gen.call("storm_expect_close", [{}] * gen.n)
        run.show("restarting the server")
        pid = await restart()
        opts.server_pid = pid
        left = await gen.call("storm_wait_disconnected", [{}] * gen.n)
        if any(r["connected"] for r in left):
            errors.append("some clients were still connected after the restart")
        tops: dict[str, int] = {}
        if chat:
            run.show(f"posting {missed} messages per room while the clients are away")
            tops = (await gen.call("storm_post", _post_args(gen, opts, names, missed)))[0]["tops"]
        run.show(f"{n:,} clients reconnecting")
        again = await _open(gen, opts, names, n, resume=True)
        errors += _ready_errors(again, n)
        check: dict[str, Any] = {}
        if chat:
            res = await gen.call("storm_check", [{"tops": tops}] * gen.n)
            check = {k: sum(r[k] for r in res) for k in _CHECK}
            for key in _CHECK:
                if check[key]:
                    errors.append(f"{check[key]:,} {key.replace('_', ' ')}")
        run.show("closing")
        await gen.call("storm_close", [{}] * gen.n)
    run.progress.end()
    return {
        "scenario": "reconnect_storm",
        "label": opts.label,
        "url": opts.url,
        "protocol": opts.protocol,
        "clients": n,
        "rooms": rooms,
        "history": history if chat else 0,
        "missed": missed if chat else 0,
        "resumed_s": again["seconds"],
        "server_cpu_s": again["server_cpu_s"],
        "generator_cpu_s": again["generator_cpu_s"],
        "generator_cpu_pct": again["generator_cpu_pct"],
        "ready": again["ready"],
        "first_join_s": first["seconds"],
        "check": check,
        "errors": list(dict.fromkeys(errors)),
        "ok": not errors,
    }


#: The reconnect storm's checks, summed over the workers (errors when not zero).
_CHECK = ("gaps", "duplicated", "bad_resume", "lost", "resets", "dropped")


def _post_args(gen: Generator, opts: Options, rooms: list[str], count: int) -> list[dict[str, Any]]:
    """storm_post for worker 0 (it holds the posters), nothing for the others."""
    return [{"url": opts.url, "rooms": rooms, "count": count}] + [
        {"url": opts.url, "rooms": [], "count": 0}
    ] * (gen.n - 1)


async def _post_and_sync(gen: Generator, opts: Options, rooms: list[str], count: int) -> None:
    tops = (await gen.call("storm_post", _post_args(gen, opts, rooms, count)))[0]["tops"]
    res = await gen.call("storm_sync", [{"tops": tops}] * gen.n)
    behind = sum(r["behind"] for r in res)
    if behind:
        raise BenchError(f"reconnect storm: {behind:,} clients never got the room's history")

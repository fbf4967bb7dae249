"""A bot that posts into a room of a running `hubbub serve` through the HTTP API.

Standard library only, so it runs anywhere Python does:

    export HUBBUB_API_KEY=secret        # the server runs with the same --api-key
    python examples/http_bot.py --room ops "deploy done"      # post one message
    uptime | python examples/http_bot.py --room ops --nick uptime   # one per stdin line

Every message gets its own client id, kept across retries: if an answer is
lost (a timeout, a dropped connection) the retry is acked with the original
seq and not stored twice. 503 "busy" answers and network errors are retried
with exponential back-off; other errors are final. Prints the stored seq of
each message; exits 1 if any message was not posted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

RETRY_STATUSES = {502, 503, 504}  # 503 from hubbub, 502/504 from a proxy in front of it
MAX_BACKOFF = 10.0


class NotPosted(Exception):
    pass


def post(url: str, key: str, payload: dict, retries: int, backoff: float, timeout: float) -> dict:
    """POST the JSON payload, retrying what is retryable; return the stored message."""
    body = json.dumps(payload).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer = response.read(1 << 20)
            try:
                decoded = json.loads(answer)
                return {**decoded["message"], "duplicate": bool(decoded["duplicate"])}
            except (ValueError, KeyError, TypeError):
                raise NotPosted(f"not a hubbub answer: {answer[:200]!r}") from None
        except urllib.error.HTTPError as exc:
            try:  # hubbub answers errors as {"error": "..."}
                reason = json.loads(exc.read(4096))["error"]
            except (ValueError, KeyError, TypeError, OSError, http.client.HTTPException):
                reason = exc.reason
            if exc.code not in RETRY_STATUSES:
                raise NotPosted(f"HTTP {exc.code}: {reason}") from None
            problem = f"HTTP {exc.code}: {reason}"
        except (OSError, http.client.HTTPException) as exc:
            # Refused or reset connections, timeouts, answers cut short (URLError
            # is an OSError; IncompleteRead an HTTPException).
            # The message may have been stored: the retry carries the same id.
            problem = str(getattr(exc, "reason", exc))
        if attempt == retries:
            raise NotPosted(f"gave up after {retries + 1} attempts, last: {problem}")
        delay = min(MAX_BACKOFF, backoff * 2**attempt) * random.uniform(0.5, 1.0)
        print(f"retrying in {delay:.2f}s ({problem})", file=sys.stderr, flush=True)
        time.sleep(delay)
    raise AssertionError("unreachable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", nargs="*", help="the message (default: one per line of stdin)")
    parser.add_argument("--url", default="http://127.0.0.1:9502", help="the hubbub server")
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--nick", default="bot")
    parser.add_argument("--api-key", default=os.environ.get("HUBBUB_API_KEY", ""))
    parser.add_argument("--retries", type=int, default=5, help="retries per message")
    parser.add_argument("--backoff", type=float, default=0.5, help="first retry delay, seconds")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    args = parser.parse_args()
    if args.retries < 0:
        parser.error("--retries must not be negative")
    if not args.api_key:
        parser.error("an API key is needed: --api-key or HUBBUB_API_KEY")

    room = urllib.parse.quote(args.room, safe="")
    url = f"{args.url.rstrip('/')}/api/rooms/{room}/messages"
    lines = [" ".join(args.text)] if args.text else (line.rstrip("\r\n") for line in sys.stdin)
    failed = 0
    for text in lines:
        if not text.strip():
            continue  # the server refuses empty messages
        payload = {"text": text, "nick": args.nick, "id": uuid.uuid4().hex}
        try:
            answer = post(url, args.api_key, payload, args.retries, args.backoff, args.timeout)
        except NotPosted as exc:
            print(f"not posted: {exc}", file=sys.stderr, flush=True)
            failed += 1
            continue
        again = " (already stored: a retry)" if answer["duplicate"] else ""
        print(f"posted to #{answer['room']} as seq {answer['seq']}{again}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

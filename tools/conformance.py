"""Run the Autobahn|Testsuite (via kosoku) against examples/echo_server.py.

    python -m tools.conformance            # sections 1-7 (the fast subset)
    python -m tools.conformance --all      # 1-7, 9, 10, 12, 13 (4 to 7 minutes)

Writes Autobahn's index.json / index.html under --outdir, prints a table of
verdicts per section, and exits 1 if any case FAILED.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAST = ["1", "2", "3", "4", "5", "6", "7"]
ALL = [*FAST, "9", "10", "12", "13"]
VERDICTS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("echo server exited early")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("echo server did not start")


def _kosoku() -> str:
    exe = Path(sys.executable).with_name("kosoku")
    found = str(exe) if exe.exists() else shutil.which("kosoku")
    if not found:
        raise SystemExit("kosoku is not installed: run `make install` (it is a dev dependency)")
    return found


def run(
    sections: list[str], outdir: Path, parallel: int = 2
) -> dict[str, collections.Counter[str]]:
    """Run the given sections; return {section: Counter(verdict)}; raise nothing."""
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "echo_server.py"), str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait(port, server)
        if outdir.exists():
            shutil.rmtree(outdir)
        cmd = [_kosoku(), f"127.0.0.1:{port}", "-p", str(parallel), "-o", str(outdir)]
        for section in sections:
            cmd += ["-i", f"{section}.*"]
        subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, check=False)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    index = json.loads((outdir / "index.json").read_text())
    result: dict[str, collections.Counter[str]] = {s: collections.Counter() for s in sections}
    for cases in index.values():
        for case_id, verdict in cases.items():
            result.setdefault(case_id.split(".")[0], collections.Counter())[
                verdict["behavior"]
            ] += 1
    return result


def failed_cases(outdir: Path) -> list[str]:
    index = json.loads((outdir / "index.json").read_text())
    return sorted(
        case for cases in index.values() for case, v in cases.items() if v["behavior"] == "FAILED"
    )


def table(result: dict[str, collections.Counter[str]]) -> str:
    lines = [
        "| section | cases | " + " | ".join(VERDICTS) + " |",
        "|---" * (len(VERDICTS) + 2) + "|",
    ]
    total: collections.Counter[str] = collections.Counter()
    for section in sorted(result, key=int):
        counts = result[section]
        total.update(counts)
        lines.append(
            f"| {section} | {sum(counts.values())} | "
            + " | ".join(str(counts.get(v, 0)) for v in VERDICTS)
            + " |"
        )
    lines.append(
        f"| all | {sum(total.values())} | "
        + " | ".join(str(total.get(v, 0)) for v in VERDICTS)
        + " |"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--all", action="store_true", help="sections 1-7, 9, 10, 12, 13")
    parser.add_argument("--outdir", type=Path, default=ROOT / "reports" / "conformance")
    parser.add_argument("-p", "--parallel", type=int, default=2)
    args = parser.parse_args()
    sections = ALL if args.all else FAST
    started = time.monotonic()
    result = run(sections, args.outdir, args.parallel)
    print(table(result))
    print(f"\n{time.monotonic() - started:.0f} s; reports in {args.outdir}/index.html")
    failed = failed_cases(args.outdir)
    if failed:
        print("FAILED:", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

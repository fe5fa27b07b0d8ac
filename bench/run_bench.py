"""Throughput of the body splitter on the emulator's own events, and of ``kata-events run`` end to end.

(1) Builds in memory the body of a 72,000-event page of ~2 KB emulator events (the same bytes the
emulator serves: 256 templates with Cyrillic text, Windows paths, escaped quotes, ``{GUID}`` and
``[x86]`` inside strings, nested ``Ioa.Rules``), feeds it to ``PageSplitter`` in 1 MiB chunks and
prints MB/s and events/s next to ``json.loads`` of the same body as the baseline of this machine.

(2) With ``--end-to-end``, in the same run: start-up (``kata-events --version`` against
``python -c pass`` from the same venv, and ``run`` until the emulator holds its first request), then
for two page shapes (two pages of 72,000 x ~2 KB; fifty pages of 1,000 x ~500 B) the same requests
made three ways against an emulator on loopback: the floor, a chain of ``curl`` processes (each page
asked with the previous page's token, the last request an empty 1 s long poll, bodies to /dev/null);
the original script's loop (requests, ``.json()``, ``json.dumps`` per event); and ``kata-events run
--once`` to /dev/null. Each client's peak RSS is its own (measured by a small wrapper process), and
kata-events runs once more with ``--max-events 1000`` to compare its peak RSS. Best of R runs; a
markdown table of the figures and ratios is printed at the end.

Run: ``python bench/run_bench.py [--events N] [--chunk BYTES] [--repeat R] [--end-to-end]``
(``--start-up``: only the start-up figures). ``--against PYTHON`` times another installation's
``kata-events`` (the one next to that interpreter, e.g. a checkout of the previous commit) in the
same run, each of its runs right after one of this one's, and adds its rows and the ratio: an A/B
on a machine whose load moves. The original script's loop needs ``requests`` (the
``[test]`` extra installs it); without it, that row says so. Not a test: it prints figures and
asserts nothing beyond the splitter returning every event.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugin"))

from kata_events.emulator.events import EventFactory  # noqa: E402
from kata_events.source.stream import PageSplitter  # noqa: E402

T0_US = 1_700_000_000_000_000


def build_body(n_events: int, event_bytes: int = 2000, seed: int = 1) -> Tuple[bytes, List[bytes]]:
    """The emulator's page body for events 1..n, and the events' bytes."""
    factory = EventFactory(seed=seed, event_bytes=event_bytes)
    events = [factory.event_bytes_for(seq, T0_US + seq * 1000) for seq in range(1, n_events + 1)]
    body = b'{"events":[' + b",".join(events) + b'],"continuationToken":"' + uuid.uuid4().hex.encode() + b'"}'
    return body, events


def split_all(body: bytes, chunk: int, events: Optional[List[bytes]] = None) -> bool:
    """Split ``body`` in ``chunk``-byte pieces; whether every event came back as ``events`` holds it.

    Without ``events`` (the timed pass) each batch is only counted and dropped, as the real pipeline
    writes and drops it: keeping 140 MB of events alive would measure the allocator's page faults,
    and comparing them would measure ``memcmp``, not the splitter. With ``events`` (a separate,
    untimed pass) every batch is compared with the emulator's bytes.
    """
    splitter = PageSplitter()
    at = 0
    for start in range(0, len(body), chunk):
        batch = splitter.feed(body[start : start + chunk])
        if events is not None and batch != events[at : at + len(batch)]:
            return False
        at += len(batch)
    splitter.close()
    return at == (len(events) if events is not None else splitter.event_count)


def bench_splitter(args: argparse.Namespace) -> List[Tuple[str, str, str]]:
    body, events = build_body(args.events, args.event_bytes)
    mb = len(body) / 1e6
    print(
        f"python {sys.version.split()[0]}; emulator body {mb:.1f} MB, {args.events} events "
        f"(avg {len(body) / args.events:.0f} B), chunks of {args.chunk} B"
    )
    if not split_all(body, args.chunk, events):
        print("ERROR: the splitter's events differ from the emulator's bytes")
        sys.exit(1)
    best = best_cpu = float("inf")
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        split_all(body, args.chunk)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    loads = loads_cpu = float("inf")
    for _ in range(max(1, args.repeat - 1)):
        t0, c0 = time.perf_counter(), time.process_time()
        json.loads(body)
        loads = min(loads, time.perf_counter() - t0)
        loads_cpu = min(loads_cpu, time.process_time() - c0)
    # CPU time is shown too: on a busy machine it moves less than the wall clock.
    rows = [
        (
            "PageSplitter, 1 MiB chunks",
            f"{best:.3f} s (cpu {best_cpu:.3f} s)",
            f"{mb / best:.0f} MB/s (cpu {mb / best_cpu:.0f}), {args.events / best:,.0f} events/s",
        ),
        (
            "json.loads (baseline)",
            f"{loads:.3f} s (cpu {loads_cpu:.3f} s)",
            f"{mb / loads:.0f} MB/s; splitter takes {best_cpu / loads_cpu:.2f}x its cpu time",
        ),
    ]
    return rows


# Runs a command and prints its peak RSS in KiB on stderr's last line. A child forked from this big
# process would report this process's RSS as its own peak (Linux records the old address space's
# high-water mark at exec), so the measuring parent must be small: this wrapper.
_PEAK_WRAPPER = """
import os, resource, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\npeak_rss_kib={usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""

# The original community script's loop (shared/seed/), minus its TCP send and log file: each page
# fetched with requests and parsed whole by .json(), each event dumped again, the token saved,
# until a page shorter than max_events (then the same 1 s long poll as the others' last request).
_SEED_LOOP = """
import json, sys, requests
url, crt, key, ca, max_events = sys.argv[1:6]
token, out = None, sys.stdout.buffer
while True:
    params = {"max_events": max_events, "max_timeout": "PT1S"}
    if token:
        params["continuation_token"] = token
    r = requests.get(url, params=params, cert=(crt, key), verify=ca, timeout=310)
    result = r.json()
    events = result["events"]
    if events:
        data = "\\\\n".join(json.dumps(e, ensure_ascii=False) for e in events) + "\\\\n"
        out.write(data.encode("utf-8"))
    token = result["continuationToken"]
    with open("continuation_token.txt", "w", encoding="utf-8") as f:
        f.write(token)
    if len(events) < int(max_events):
        break
"""


def _timed(cmd: List[str], env: Optional[dict] = None, cwd: Optional[str] = None) -> Tuple[float, float]:
    """(seconds, peak RSS MB) of ``cmd`` with stdout on /dev/null; raises if it fails."""
    with open(os.devnull, "wb") as devnull:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _PEAK_WRAPPER, *cmd],
            stdout=devnull,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            timeout=600,
        )
        elapsed = time.perf_counter() - t0
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}: {err[-2000:]}")
    peak = next(
        (
            int(line.split("=", 1)[1]) / 1024
            for line in err.splitlines()[::-1]
            if line.startswith("peak_rss_kib=")
        ),
        0.0,
    )
    return elapsed, peak


def _latest_token(emu: Any, ext_id: str) -> str:
    """The token the emulator handed out last to ``ext_id`` (the curl chain's next request uses it)."""
    with emu._lock:
        subs = [s for s in emu._subscriptions.values() if s.external_system_id == ext_id]
        return subs[0].tokens[-1]


class Setup:
    """An emulator on loopback with a backlog, a client certificate, and the commands to time."""

    def __init__(self, tmp: str, events: int, event_bytes: int, max_events: int) -> None:
        from kata_events.certs import make_self_signed_cert
        from kata_events.emulator.server import Emulator

        self.tmp, self.max_events = tmp, max_events
        self.requests = events // max_events + 1  # the full pages, then the empty 1 s long poll
        self.crt, self.key = Path(tmp, "client.crt"), Path(tmp, "client.key")
        make_self_signed_cert("bench").write(self.crt, self.key)
        self.emu = Emulator(
            listen="127.0.0.1:0",
            state_dir=Path(tmp, f"emu-{events}-{event_bytes}"),
            approve="auto",
            backlog=events,
            rate=0,
            event_bytes=event_bytes,
        )
        self.emu.start()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KATA_EVENTS_")}
        self.kata = [str(Path(sys.executable).with_name("kata-events"))]
        if not Path(self.kata[0]).exists():
            self.kata = [sys.executable, "-m", "kata_events"]

    def close(self) -> None:
        self.emu.stop()

    def curl_chain(self) -> float:
        """The floor: one curl process per request, each with the previous page's token, the last a
        1 s long poll that comes back empty; bodies to /dev/null."""
        ext_id = str(uuid.uuid4())
        base = [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "--cert",
            str(self.crt),
            "--key",
            str(self.key),
            "--cacert",
            str(self.emu.ca_file),
        ]
        url = f"{self.emu.events_url(ext_id)}?max_events={self.max_events}&max_timeout=PT1S"
        t0 = time.perf_counter()
        token = ""
        for _ in range(self.requests):
            full = url + (f"&continuation_token={token}" if token else "")
            subprocess.run(base + [full], check=True, timeout=120)
            token = _latest_token(self.emu, ext_id)
        return time.perf_counter() - t0

    def seed_loop(self) -> Tuple[float, float]:
        url = self.emu.events_url(str(uuid.uuid4()))
        return _timed(
            [
                sys.executable,
                "-c",
                _SEED_LOOP,
                url,
                str(self.crt),
                str(self.key),
                str(self.emu.ca_file),
                str(self.max_events),
            ],
            self.env,
            cwd=self.tmp,
        )

    def run_args(self, max_events: Optional[int] = None, kata: Optional[List[str]] = None) -> List[str]:
        state = Path(self.tmp, f"state-{uuid.uuid4().hex}.json")
        return [
            *(kata or self.kata),
            "run",
            "--once",
            "--url",
            self.emu.url,
            "--external-system-id",
            str(uuid.uuid4()),
            "--cert",
            str(self.crt),
            "--key",
            str(self.key),
            "--ca-file",
            str(self.emu.ca_file),
            "--state-file",
            str(state),
            "--max-events",
            str(max_events or self.max_events),
            "--stats-interval",
            "0",
            "--log-level",
            "warning",
        ]

    def kata_events(
        self, max_events: Optional[int] = None, kata: Optional[List[str]] = None
    ) -> Tuple[float, float]:
        return _timed(self.run_args(max_events, kata), self.env)

    def first_request(self, kata: Optional[List[str]] = None) -> float:
        """Seconds from starting ``run`` until the emulator has its first request."""
        served = self.emu.requests_served
        with open(os.devnull, "wb") as devnull:
            t0 = time.perf_counter()
            proc = subprocess.Popen(self.run_args(None, kata), stdout=devnull, stderr=devnull, env=self.env)
            while self.emu.requests_served == served and time.perf_counter() - t0 < 10:
                time.sleep(0.0005)
            elapsed = time.perf_counter() - t0
            proc.wait(timeout=600)
        return elapsed


def _best(measure: Callable[[], Any], repeat: int) -> Any:
    results = [measure() for _ in range(repeat)]
    return min(results, key=lambda r: r[0] if isinstance(r, tuple) else r), results


def _against(args: argparse.Namespace) -> Optional[List[str]]:
    """The other installation's ``kata-events`` (``--against``), or None."""
    return [str(Path(args.against).with_name("kata-events"))] if args.against else None


def _ab(measure: Callable[[Optional[List[str]]], Any], other: List[str], repeat: int) -> Tuple[Any, Any]:
    """Best of ``repeat`` for this installation and for ``other``, their runs alternating."""
    mine: List[Any] = []
    theirs: List[Any] = []
    for _ in range(repeat):
        mine.append(measure(None))
        theirs.append(measure(other))

    def key(r: Any) -> float:
        return r[0] if isinstance(r, tuple) else r

    return min(mine, key=key), min(theirs, key=key)


def bench_shape(
    args: argparse.Namespace, tmp: str, label: str, events: int, event_bytes: int, max_events: int
) -> List[Tuple[str, str, str]]:
    setup = Setup(tmp, events, event_bytes, max_events)
    try:
        floor, _ = _best(setup.curl_chain, args.repeat)
        other = _against(args)
        if other is not None:
            (kata, kata_rss), (before, before_rss) = _ab(
                lambda k: setup.kata_events(None, k), other, args.repeat
            )
        else:
            (kata, kata_rss), runs = _best(setup.kata_events, args.repeat)
            kata_rss = max(r[1] for r in runs)
        loop, than_loop = f"{label}: the original script's loop", ""
        # The original script needs requests, which kata-events itself no longer installs.
        if importlib.util.find_spec("requests") is None:
            seed_row = (loop, "not run", f"it needs requests: `{sys.executable} -m pip install requests`")
        else:
            (seed, seed_rss), _ = _best(setup.seed_loop, args.repeat)
            seed_row = (loop, f"{seed:.2f} s", f"{seed / floor:.2f}x floor; peak RSS {seed_rss:.0f} MB")
            than_loop = f", **{seed / kata:.1f}x faster than the loop**"
        rows = [
            (f"{label}: curl chain, to /dev/null (floor)", f"{floor:.2f} s", "1.00x"),
            seed_row,
            (
                f"{label}: kata-events run --once > /dev/null",
                f"{kata:.2f} s",
                f"**{kata / floor:.2f}x floor**{than_loop}; peak RSS **{kata_rss:.0f} MB**",
            ),
        ]
        if other is not None:
            rows.append(
                (
                    f"{label}: kata-events of --against, same run",
                    f"{before:.2f} s",
                    f"{before / floor:.2f}x floor; peak RSS {before_rss:.0f} MB; this one takes "
                    f"**{kata / before:.2f}x** its time",
                )
            )
        if args.rss_pages and max_events > 1000:
            (small, small_rss), _ = _best(lambda: setup.kata_events(1000), 1)
            rows.append(
                (
                    f"{label}: kata-events, --max-events 1000 instead",
                    f"{small:.2f} s",
                    f"peak RSS {small_rss:.0f} MB (the {max_events:,}-event run's is "
                    f"{kata_rss / small_rss:.2f}x this)",
                )
            )
        return rows
    finally:
        setup.close()


def bench_startup(args: argparse.Namespace, tmp: str) -> List[Tuple[str, str, str]]:
    kata = Path(sys.executable).with_name("kata-events")
    bare = min(_wall([sys.executable, "-c", "pass"]) for _ in range(10))
    version = min(_wall([str(kata), "--version"]) for _ in range(10))
    other = _against(args)
    setup = Setup(tmp, 0, 500, 1000)
    try:
        if other is not None:
            version_b = min(_wall([other[0], "--version"]) for _ in range(10))
            first, first_b = _ab(setup.first_request, other, 5)
        else:
            first = min(setup.first_request() for _ in range(5))
    finally:
        setup.close()
    rows = [
        ("start-up: python -c pass (same venv)", f"{bare * 1000:.0f} ms", ""),
        (
            "start-up: kata-events --version",
            f"{version * 1000:.0f} ms",
            f"**+{(version - bare) * 1000:.0f} ms** over the bare interpreter",
        ),
        (
            "start-up: kata-events run, to its first request",
            f"{first * 1000:.0f} ms",
            "process start to the emulator holding the request (TLS handshake included)",
        ),
    ]
    if other is not None:
        rows += [
            (
                "start-up: --against's kata-events --version",
                f"{version_b * 1000:.0f} ms",
                f"+{(version_b - bare) * 1000:.0f} ms over the bare interpreter",
            ),
            ("start-up: --against's kata-events run, to its first request", f"{first_b * 1000:.0f} ms", ""),
        ]
    return rows


def _wall(cmd: List[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def bench_end_to_end(args: argparse.Namespace) -> List[Tuple[str, str, str]]:
    # Installed packages have bytecode: a shell's PYTHONDONTWRITEBYTECODE would make every child
    # compile kata_events from source at each start (+~50 ms here), which no installed run does.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    rows: List[Tuple[str, str, str]] = []
    if args.start_up:
        with tempfile.TemporaryDirectory() as tmp:
            return bench_startup(args, tmp)
    if not shutil.which("curl"):
        return [("curl", "missing", "end-to-end skipped")]
    with tempfile.TemporaryDirectory() as tmp:
        rows += bench_startup(args, tmp)
        rows += bench_shape(args, tmp, "2 x 72,000 x ~2 KB", 2 * args.events, args.event_bytes, args.events)
        rows += bench_shape(args, tmp, "50 x 1,000 x ~500 B", 50_000, 500, 1000)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=72_000)
    parser.add_argument("--event-bytes", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=1 << 20)
    parser.add_argument("--repeat", type=int, default=3, help="best of R runs")
    parser.add_argument("--end-to-end", action="store_true", help="also time curl and kata-events run")
    parser.add_argument(
        "--start-up",
        action="store_true",
        help="only the start-up figures (--version, run to its first request): ~20 s",
    )
    parser.add_argument(
        "--against",
        metavar="PYTHON",
        help="also time the kata-events installed next to this interpreter, alternating runs (A/B)",
    )
    parser.add_argument("--no-splitter", action="store_true", help="skip the in-memory splitter figure")
    parser.add_argument(
        "--no-rss-pages",
        dest="rss_pages",
        action="store_false",
        help="skip the --max-events 1000 run that compares peak RSS",
    )
    args = parser.parse_args(argv)
    rows: List[Tuple[str, str, str]] = []
    if not args.no_splitter and not args.start_up:
        rows += bench_splitter(args)
    if args.end_to_end or args.start_up:
        rows += bench_end_to_end(args)
    print()
    print("| what | time | figures |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

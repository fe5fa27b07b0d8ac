"""Throughput of the body splitter on the emulator's own events, and of ``kata-events run`` end to end.

(1) Builds in memory the body of a 72,000-event page of ~2 KB emulator events (the same bytes the
emulator serves: 256 templates with Cyrillic text, Windows paths, escaped quotes, ``{GUID}`` and
``[x86]`` inside strings, nested ``Ioa.Rules``), feeds it to ``PageSplitter`` in 1 MiB chunks and
prints MB/s and events/s next to ``json.loads`` of the same body as the baseline of this machine.

(2) With ``--end-to-end``: starts an emulator on loopback with that backlog, fetches the page with
``curl`` to /dev/null (the floor: transfer and TLS only), then times ``kata-events run --once`` with
stdout on /dev/null, with its peak RSS, and prints a markdown table with the ratios.

Run: ``python bench/run_bench.py [--events N] [--chunk BYTES] [--repeat R] [--end-to-end]``. Not a
test: it prints figures and asserts nothing beyond the splitter returning every event.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugin"))

from kata_events.emulator.events import EventFactory  # noqa: E402
from kata_events.stream import PageSplitter  # noqa: E402

T0_US = 1_700_000_000_000_000


def build_body(n_events: int, event_bytes: int = 2000, seed: int = 1) -> Tuple[bytes, List[bytes]]:
    """The emulator's page body for events 1..n, and the events' bytes."""
    factory = EventFactory(seed=seed, event_bytes=event_bytes)
    events = [factory.event_bytes_for(seq, T0_US + seq * 1000) for seq in range(1, n_events + 1)]
    body = b'{"events":[' + b",".join(events) + b'],"continuationToken":"' + uuid.uuid4().hex.encode() + b'"}'
    return body, events


def split_all(body: bytes, chunk: int) -> List[bytes]:
    splitter = PageSplitter()
    out: List[bytes] = []
    for start in range(0, len(body), chunk):
        out.extend(splitter.feed(body[start : start + chunk]))
    splitter.close()
    return out


def bench_splitter(args: argparse.Namespace) -> List[Tuple[str, str, str]]:
    body, events = build_body(args.events, args.event_bytes)
    mb = len(body) / 1e6
    print(f"python {sys.version.split()[0]}; emulator body {mb:.1f} MB, {args.events} events "
          f"(avg {len(body) / args.events:.0f} B), chunks of {args.chunk} B")
    best = best_cpu = float("inf")
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        got = split_all(body, args.chunk)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
        if got != events:
            print("ERROR: the splitter's events differ from the emulator's bytes")
            sys.exit(1)
        del got
    loads = loads_cpu = float("inf")
    for _ in range(max(1, args.repeat - 1)):
        t0, c0 = time.perf_counter(), time.process_time()
        json.loads(body)
        loads = min(loads, time.perf_counter() - t0)
        loads_cpu = min(loads_cpu, time.process_time() - c0)
    # CPU time is shown too: on a busy machine it moves less than the wall clock.
    rows = [
        ("PageSplitter, 1 MiB chunks", f"{best:.3f} s (cpu {best_cpu:.3f} s)",
         f"{mb / best:.0f} MB/s (cpu {mb / best_cpu:.0f}), {args.events / best:,.0f} events/s"),
        ("json.loads (baseline)", f"{loads:.3f} s (cpu {loads_cpu:.3f} s)",
         f"{mb / loads:.0f} MB/s; splitter takes {best_cpu / loads_cpu:.2f}x its cpu time"),
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

# What the original community script does with a page: the whole body parsed into objects, then
# each event dumped again, the way users run it today (minus its TCP send).
_SEED_LIKE = """
import json, sys, requests
url, crt, key, ca = sys.argv[1:5]
r = requests.get(url, cert=(crt, key), verify=ca, timeout=300)
events = r.json()["events"]
data = "\\n".join(json.dumps(e, ensure_ascii=False) for e in events) + "\\n"
sys.stdout.buffer.write(data.encode("utf-8"))
"""


def _timed(cmd: List[str], env: Optional[dict] = None) -> Tuple[float, float, int, str]:
    """(seconds, peak RSS MB, exit code, stderr tail) of ``cmd`` with stdout on /dev/null."""
    with open(os.devnull, "wb") as devnull:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, *cmd], stdout=devnull,
                              stderr=subprocess.PIPE, env=env, timeout=300)
        elapsed = time.perf_counter() - t0
    err = proc.stderr.decode(errors="replace")
    peak = 0.0
    for line in err.splitlines()[::-1]:
        if line.startswith("peak_rss_kib="):
            peak = int(line.split("=", 1)[1]) / 1024
            break
    return elapsed, peak, proc.returncode, err[-2000:]


def bench_end_to_end(args: argparse.Namespace) -> List[Tuple[str, str, str]]:
    from kata_events.certs import make_self_signed_cert
    from kata_events.emulator.server import Emulator

    if not shutil.which("curl"):
        return [("curl", "missing", "end-to-end skipped")]
    rows: List[Tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        crt, key = Path(tmp, "client.crt"), Path(tmp, "client.key")
        make_self_signed_cert("bench").write(crt, key)
        ext_id = str(uuid.uuid4())
        emu = Emulator(listen="127.0.0.1:0", state_dir=Path(tmp, "emu"), approve="auto",
                       backlog=args.events, rate=0, event_bytes=args.event_bytes)
        emu.start()
        try:
            url = f"{emu.events_url(ext_id)}?max_events={args.events}"
            curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", "--cert", str(crt),
                    "--key", str(key), "--cacert", str(emu.ca_file), url]
            curl_best = float("inf")
            size = 0
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                result = subprocess.run(curl, capture_output=True, text=True, check=True, timeout=60)
                curl_best = min(curl_best, time.perf_counter() - t0)
                size = int(result.stdout)
            rows.append(("curl to /dev/null (floor)", f"{curl_best:.2f} s", f"{size / 1e6:.0f} MB"))

            env = {k: v for k, v in os.environ.items() if not k.startswith("KATA_EVENTS_")}
            seed_best, seed_peak = float("inf"), 0.0
            for _ in range(args.repeat):
                seed_url = f"{emu.events_url(str(uuid.uuid4()))}?max_events={args.events}"
                elapsed, peak, code, err = _timed(
                    [sys.executable, "-c", _SEED_LIKE, seed_url, str(crt), str(key), str(emu.ca_file)], env
                )
                if code != 0:
                    print(err)
                    break
                seed_best, seed_peak = min(seed_best, elapsed), max(seed_peak, peak)
            rows.append(("the original script's way (requests, .json(), json.dumps per event)",
                         f"{seed_best:.2f} s",
                         f"{seed_best / curl_best:.2f}x curl; peak RSS {seed_peak:.0f} MB"))

            run_best, run_peak = float("inf"), 0.0
            for i in range(args.repeat):
                state = Path(tmp, f"state-{i}.json")
                # A fresh subscription per run, so each run fetches the same full page.
                cmd = [sys.executable, "-m", "kata_events", "run", "--once", "--url", emu.url,
                       "--external-system-id", str(uuid.uuid4()), "--cert", str(crt), "--key", str(key),
                       "--ca-file", str(emu.ca_file), "--state-file", str(state),
                       "--max-events", str(args.events), "--stats-interval", "0", "--log-level", "warning"]
                elapsed, peak, code, err = _timed(cmd, env)
                if code != 0:
                    print(err)
                    rows.append(("kata-events run --once", "failed", f"exit {code}"))
                    return rows
                run_best, run_peak = min(run_best, elapsed), max(run_peak, peak)
            rows.append(("kata-events run --once > /dev/null", f"{run_best:.2f} s",
                         f"{run_best / curl_best:.2f}x curl; {seed_best / run_best:.1f}x faster than the "
                         f"original script's way; peak RSS {run_peak:.0f} MB"))
        finally:
            emu.stop()
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=72_000)
    parser.add_argument("--event-bytes", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=1 << 20)
    parser.add_argument("--repeat", type=int, default=3, help="best of R runs")
    parser.add_argument("--end-to-end", action="store_true", help="also time curl and kata-events run")
    parser.add_argument("--no-splitter", action="store_true", help="skip the in-memory splitter figure")
    args = parser.parse_args(argv)
    rows: List[Tuple[str, str, str]] = []
    if not args.no_splitter:
        rows += bench_splitter(args)
    if args.end_to_end:
        rows += bench_end_to_end(args)
    print()
    print("| what | time | figures |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

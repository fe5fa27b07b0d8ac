"""Soak: ``kata-events run`` for a long time against the emulator, with random faults and a consumer
that pauses now and then; at the end, nothing may be lost by the emulator's sequence numbers.

The emulator runs as its own process (``kata-events emulator``) producing ``--rate`` events per
second (default 2,000). ``kata-events run`` reads it over mutual TLS on loopback with stdout on a
pipe (``--ack none``: a page is committed once the reader has taken its bytes). The consumer here
reads that pipe and records every event's ``EmulatorSeq``; now and then it stops reading for a few
seconds, so the pipe fills and the process waits. Meanwhile faults are queued at random through
the emulator's control endpoint (``POST /emulator/faults``): HTTP errors, cut and malformed bodies,
impossible tokens, slow, hanging and trickling answers, a revoked approval. Every ``--sample``
seconds the process's RSS, open descriptors and threads are read from /proc.

At the end faults stop, the consumer reads without pauses until every event the emulator had made
by then arrived (or ``--drain`` seconds pass), the process gets SIGTERM, and the script prints:
events, faults injected, consumer pauses, RSS and descriptors min/max, threads, duplicates, lost
(events of the range never delivered), the process's log events by name, and whether stderr held
anything but JSON log lines. Exit status 0 when lost = 0, no traceback and a clean exit, else 1.

Run: ``python bench/soak.py [--minutes 30] [--rate 2000] [--fault-every 20] [--seed N]``
(``nice -n 10`` it on a shared machine). Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

PLUGIN = Path(__file__).resolve().parent.parent / "plugin"
sys.path.insert(0, str(PLUGIN))

import requests  # noqa: E402

from kata_events import certs  # noqa: E402

SEQ = re.compile(rb'^\{"EmulatorSeq":(\d+),')
#: Faults drawn at random (weights in the second field): what a Central Node or a proxy can do.
FAULTS = [
    ("500", 3),
    ("502", 3),
    ("503", 3),
    ("503x3", 2),
    ("429:retry_after=2", 2),
    ("drop", 3),
    ("truncated", 2),
    ("no_events", 1),
    ("no_token", 1),
    ("slow:delay=3", 2),
    ("hang", 1),
    ("401", 1),
    ("huge_token", 1),
    ("odd_token", 1),
    ("trickle_headers:delay=1", 1),
    ("trickle_body:delay=1", 1),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_sample(pid: int) -> Optional[Dict[str, int]]:
    """RSS (KiB), threads and open descriptors of a live process, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_kib": int(fields["VmRSS"].split()[0]),
        "threads": int(fields["Threads"]),
        "fds": fds,
    }


class Consumer(threading.Thread):
    """Reads the process's stdout, records each EmulatorSeq, pauses now and then."""

    def __init__(self, fd: int, rng: random.Random, pause_every: float, pause_max: float) -> None:
        super().__init__(name="consumer", daemon=True)
        self.fd = fd
        self.rng = rng
        self.pause_every = pause_every
        self.pause_max = pause_max
        self.seen = bytearray()
        self.lines = 0
        self.duplicates = 0
        self.bad_lines = 0
        self.pauses = 0
        self.paused_seconds = 0.0
        self.pausing = True
        self.max_seq = 0

    def run(self) -> None:
        tail = b""
        next_pause = time.monotonic() + self.rng.expovariate(1 / self.pause_every)
        while True:
            if self.pausing and time.monotonic() >= next_pause:
                pause = self.rng.uniform(1.0, self.pause_max)
                self.pauses += 1
                self.paused_seconds += pause
                time.sleep(pause)
                next_pause = time.monotonic() + self.rng.expovariate(1 / self.pause_every)
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                break
            data = tail + chunk
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            for line in data[:cut].split(b"\n")[:-1]:
                self._count(line)
        if tail:
            self.bad_lines += 1

    def _count(self, line: bytes) -> None:
        self.lines += 1
        match = SEQ.match(line)
        if not match:
            self.bad_lines += 1
            return
        seq = int(match.group(1))
        if seq >= len(self.seen):
            self.seen.extend(bytes(max(seq + 1 - len(self.seen), 1 << 20)))
        if self.seen[seq]:
            self.duplicates += 1
        else:
            self.seen[seq] = 1
        self.max_seq = max(self.max_seq, seq)

    def missing(self, last: int) -> int:
        have = self.seen[1 : last + 1]
        return last - have.count(1)


class StderrReader(threading.Thread):
    """Counts the process's log events by name; keeps any line that is not a JSON log line."""

    def __init__(self, stream) -> None:
        super().__init__(name="stderr", daemon=True)
        self.stream = stream
        self.events: Counter = Counter()
        self.other: List[str] = []
        self.errors: List[str] = []

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            text = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                record = json.loads(text)
                name = record["event"]
            except (ValueError, KeyError, TypeError):
                self.other.append(text)
                continue
            self.events[name] += 1
            if record.get("level") == "error" and len(self.errors) < 50:
                self.errors.append(f"{name}: {record.get('message', '')[:200]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long faults are injected (30)")
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second (2000)")
    parser.add_argument("--event-bytes", type=int, default=1000, help="approximate event size (1000)")
    parser.add_argument("--fault-every", type=float, default=20.0, help="mean seconds between faults")
    parser.add_argument("--pause-every", type=float, default=45.0, help="mean seconds between pauses")
    parser.add_argument("--pause-max", type=float, default=10.0, help="longest consumer pause (s)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples (10)")
    parser.add_argument("--max-events", type=int, default=5000, help="run's --max-events (5000)")
    parser.add_argument("--max-timeout", type=int, default=5, help="run's --max-timeout (5)")
    parser.add_argument("--drain", type=float, default=300.0, help="seconds allowed to catch up (300)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the working files here")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    work = Path(args.keep or tempfile.mkdtemp(prefix="kata-soak-"))
    work.mkdir(parents=True, exist_ok=True)

    cert_file, key_file = work / "client.crt", work / "client.key"
    certs.make_self_signed_cert("soak", days=2, key_type="ec").write(cert_file, key_file)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    emu_dir = work / "emulator"
    ca_file = emu_dir / "ca.crt"
    # The children run this checkout's code, whatever the interpreter has installed.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KATA_EVENTS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGIN), env.get("PYTHONPATH", "")]))
    emu_log = open(work / "emulator.log", "wb")  # noqa: SIM115 - closed after the emulator stops
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kata_events",
            "emulator",
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(emu_dir),
            "--approve",
            "auto",
            "--backlog",
            "0",
            "--rate",
            str(args.rate),
            "--event-bytes",
            str(args.event_bytes),
            "--log-level",
            "warning",
        ],
        stdin=subprocess.DEVNULL,
        stdout=emu_log,
        stderr=emu_log,
        env=env,
    )
    control = requests.Session()
    control.trust_env = False
    for _ in range(200):
        try:
            control.get(f"{url}/emulator/status", verify=str(ca_file), timeout=2).raise_for_status()
            break
        except (requests.RequestException, OSError):
            time.sleep(0.1)
    else:
        print("the emulator did not start; see", work / "emulator.log")
        emulator.kill()
        return 1

    run_argv = [
        sys.executable,
        "-m",
        "kata_events",
        "run",
        "--url",
        url,
        "--external-system-id",
        str(uuid.uuid4()),
        "--cert",
        str(cert_file),
        "--key",
        str(key_file),
        "--ca-file",
        str(ca_file),
        "--state-file",
        str(work / "state.json"),
        "--ack",
        "none",
        "--max-events",
        str(args.max_events),
        "--max-timeout",
        str(args.max_timeout),
        "--stats-interval",
        "60",
    ]
    run = subprocess.Popen(
        run_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert run.stdout is not None and run.stderr is not None
    consumer = Consumer(run.stdout.fileno(), rng, args.pause_every, args.pause_max)
    stderr = StderrReader(run.stderr)
    consumer.start()
    stderr.start()

    samples: List[Dict[str, int]] = []
    faults: Counter = Counter()
    started = time.monotonic()
    end = started + args.minutes * 60
    next_sample = started
    next_fault = started + rng.expovariate(1 / args.fault_every)
    print(f"soak: {args.minutes:g} min at {args.rate:g} events/s, seed {seed}, files in {work}", flush=True)
    while time.monotonic() < end and run.poll() is None:
        now = time.monotonic()
        if now >= next_sample:
            # Not before the interpreter has started: a sample of the bare exec says nothing.
            sample = proc_sample(run.pid) if now - started >= 5 else None
            if sample:
                samples.append(sample)
                if len(samples) % 30 == 1:
                    print(
                        f"  {(now - started) / 60:5.1f} min: {consumer.lines} lines, "
                        f"RSS {sample['rss_kib'] / 1024:.1f} MiB, fds {sample['fds']}, "
                        f"threads {sample['threads']}, faults {sum(faults.values())}",
                        flush=True,
                    )
            next_sample += args.sample
        if now >= next_fault:
            # One fault at a time: queued faster than requests are made (a retry waits with
            # backoff), they would hit every request and measure nothing but the backoff cap.
            spec = rng.choices([f for f, _ in FAULTS], weights=[w for _, w in FAULTS])[0]
            try:
                queued_now = control.get(f"{url}/emulator/status", verify=str(ca_file), timeout=5)
                if not queued_now.json().get("faults"):
                    control.post(
                        f"{url}/emulator/faults", json=spec, verify=str(ca_file), timeout=5
                    ).raise_for_status()
                    faults[spec.split(":")[0]] += 1
            except (requests.RequestException, ValueError) as exc:
                print(f"  could not queue fault {spec}: {exc}", flush=True)
            next_fault = now + rng.expovariate(1 / args.fault_every)
        time.sleep(0.2)

    # Catch up: no more faults or pauses; every event made until now must arrive.
    consumer.pausing = False
    status = control.get(f"{url}/emulator/status", verify=str(ca_file), timeout=10).json()
    last = status["next_seq"] - 1
    queued = len(status.get("faults", []))
    drain_deadline = time.monotonic() + args.drain
    while consumer.missing(last) and time.monotonic() < drain_deadline and run.poll() is None:
        sample = proc_sample(run.pid)
        if sample:
            samples.append(sample)
        time.sleep(1.0)
    caught_up = time.monotonic() - (started + args.minutes * 60)
    sample = proc_sample(run.pid)
    if sample:
        samples.append(sample)
    stop_sent = time.monotonic()
    if run.poll() is None:
        run.send_signal(signal.SIGTERM)
    try:
        code: Optional[int] = run.wait(30)
    except subprocess.TimeoutExpired:
        run.kill()
        code = None
    exit_ms = (time.monotonic() - stop_sent) * 1000
    consumer.join(10)
    stderr.join(10)
    emulator.send_signal(signal.SIGTERM)
    try:
        emulator.wait(10)
    except subprocess.TimeoutExpired:
        emulator.kill()
    emu_log.close()

    lost = consumer.missing(last)
    traceback = any("Traceback" in line for line in stderr.other)
    rss = [s["rss_kib"] / 1024 for s in samples] or [0.0]
    fds = [s["fds"] for s in samples] or [0]
    threads = [s["threads"] for s in samples] or [0]
    print()
    print(f"duration        {args.minutes:g} min of faults, then {caught_up:.1f} s to catch up")
    print(
        f"events          {last} made, {last - lost} of them delivered, {consumer.lines} lines read "
        f"({consumer.lines / max(1.0, args.minutes * 60 + caught_up):.0f} lines/s)"
    )
    print(f"faults injected {sum(faults.values())}: {dict(sorted(faults.items()))} ({queued} still queued)")
    print(f"consumer pauses {consumer.pauses}, {consumer.paused_seconds:.0f} s in all")
    print(f"RSS MiB         min {min(rss):.1f} max {max(rss):.1f} ({len(samples)} samples)")
    print(f"open fds        min {min(fds)} max {max(fds)}")
    print(f"threads         min {min(threads)} max {max(threads)}")
    print(f"duplicates      {consumer.duplicates}")
    print(f"lost            {lost}")
    print(f"bad lines       {consumer.bad_lines}")
    print(f"log events      {dict(sorted(stderr.events.items()))}")
    print(f"errors logged   {len(stderr.errors)} (first: {stderr.errors[:3]})")
    print(f"stderr non-JSON {len(stderr.other)} lines, traceback: {'yes' if traceback else 'no'}")
    print(f"exit            code {code} {exit_ms:.0f} ms after SIGTERM")
    print()
    print(
        "| minutes | events | faults | pauses | RSS MiB min/max | fds min/max | threads min/max "
        "| duplicates | lost |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.minutes:g} | {last} | {sum(faults.values())} | {consumer.pauses} "
        f"| {min(rss):.1f} / {max(rss):.1f} | {min(fds)} / {max(fds)} | {min(threads)} / {max(threads)} "
        f"| {consumer.duplicates} | {lost} |"
    )
    ok = lost == 0 and not traceback and code == 0 and consumer.bad_lines == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

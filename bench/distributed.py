"""Ten nodes on one collector: what N ``kata-events run`` processes cost, steady and catching up.

A distributed KATA has a primary and several secondary Central Nodes, each pulled by its own run.
This script starts ``--nodes`` emulators (``kata-events emulator``, one process each, every one
producing ``--rate`` events per second) and one ``kata-events run`` per emulator, each with its own
state file, certificate and external system id, stdout on a pipe that a thread here reads all the
time (``--ack none``). Then two phases, each bounded:

1. **steady** (``--steady`` seconds, after ``--warmup``): every node at ``--rate`` events/s;
2. **catch-up**: ``--backlog`` events stamped ``--backlog-age`` seconds ago are added to every
   emulator at once (the steady rate goes on), and the phase lasts until every node has caught up
   (its newest event delivered is under ``--caught-up`` seconds old) or ``--catchup`` seconds pass.

Every second it reads each run's RSS and CPU time from /proc and the age of the newest event each
reader has taken: the node's lag. A steady event's age comes from the ``Timestamp`` the emulator
stamps on it; the emulator never stamps an event older than the one before it, so an event of the
backlog (known by its ``EmulatorSeq`` range) counts as ``--backlog-age`` older than its stamp. At the end
of each phase it prints, per run and in total, peak RSS (VmHWM and the highest sum of RSS seen at
one moment), CPU (percent of one core over the phase), events delivered, the slowest node's lag,
and for the catch-up how long each node took; then a Markdown table for docs/performance.md.
The emulators' own CPU is printed too: on one machine they share the cores with the runs.

Run: ``python bench/distributed.py [--nodes 10] [--rate 500] [--steady 60] [--catchup 90]``.
Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

PLUGIN = Path(__file__).resolve().parent.parent / "plugin"
sys.path.insert(0, str(PLUGIN))

import requests  # noqa: E402

from kata_events import certs  # noqa: E402

HEAD = re.compile(rb'\{"EmulatorSeq":(\d+),"Timestamp":(\d+),')
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def memory_kib(pid: int) -> Dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB, from /proc/<pid>/status."""
    found = {"VmRSS": 0, "VmHWM": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in found:
                found[key] = int(line.split()[1])
    except OSError:
        pass
    return found


class Reader(threading.Thread):
    """Reads one run's stdout, counts lines, keeps the newest event's head (seq and stamp)."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.lines = 0
        self.newest_seq = 0
        self.newest_stamp_us = 0
        #: The backlog's EmulatorSeq range and how much older than their stamp its events are.
        self.backlog = (0, -1, 0.0)
        self._tail = b""

    def run(self) -> None:
        while True:
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                return
            self.lines += chunk.count(b"\n")
            data = self._tail + chunk
            end = data.rfind(b"\n")
            if end < 0:
                self._tail = data[-(1 << 16) :]
                continue
            start = data.rfind(b"\n", 0, end) + 1
            match = HEAD.match(data, start)
            if match:
                self.newest_seq, self.newest_stamp_us = int(match.group(1)), int(match.group(2))
            self._tail = data[end + 1 :]

    def lag(self, now: float) -> Optional[float]:
        if not self.newest_stamp_us:
            return None
        first, last, age = self.backlog
        older = age if first <= self.newest_seq <= last else 0.0
        return max(0.0, now - self.newest_stamp_us / 1e6 + older)


@dataclass
class Node:
    name: str
    url: str
    ca_file: Path
    emulator: subprocess.Popen
    run: Optional[subprocess.Popen] = None
    reader: Optional[Reader] = None
    lags: List[float] = field(default_factory=list)
    rss: List[int] = field(default_factory=list)


@dataclass
class Phase:
    name: str
    seconds: float
    run_cpu: Dict[str, float]
    emulator_cpu: float
    events: Dict[str, int]
    peak_rss_kib: Dict[str, int]
    peak_total_rss_kib: int
    max_lag: Dict[str, float]
    caught_up_after: Dict[str, Optional[float]]
    load: float


def start_emulator(work: Path, name: str, rate: float, event_bytes: int, env: Dict[str, str]) -> Node:
    port = free_port()
    state_dir = work / f"emulator-{name}"
    log = open(work / f"emulator-{name}.log", "wb")  # noqa: SIM115 - lives as long as the emulator
    proc = subprocess.Popen(
        [sys.executable, "-m", "kata_events", "emulator", "--listen", f"127.0.0.1:{port}"]
        + ["--state-dir", str(state_dir), "--approve", "auto", "--backlog", "0"]
        + ["--rate", str(rate), "--event-bytes", str(event_bytes), "--log-level", "warning"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=env,
    )
    return Node(name, f"https://127.0.0.1:{port}", state_dir / "ca.crt", proc)


def wait_ready(node: Node, control: requests.Session) -> None:
    for _ in range(600):
        try:
            control.get(f"{node.url}/emulator/status", verify=str(node.ca_file), timeout=2).raise_for_status()
            return
        except (requests.RequestException, OSError):
            time.sleep(0.1)
    raise SystemExit(f"emulator {node.name} did not start")


def start_run(node: Node, work: Path, env: Dict[str, str], max_events: int, max_timeout: int) -> None:
    cert, key = work / f"{node.name}.crt", work / f"{node.name}.key"
    certs.make_self_signed_cert(node.name, days=2, key_type="ec").write(cert, key)
    argv = [sys.executable, "-m", "kata_events", "run", "--url", node.url, "--name", node.name]
    argv += ["--external-system-id", str(uuid.uuid4()), "--cert", str(cert), "--key", str(key)]
    argv += ["--ca-file", str(node.ca_file), "--state-file", str(work / f"{node.name}.json")]
    argv += ["--ack", "none", "--max-events", str(max_events), "--max-timeout", str(max_timeout)]
    argv += ["--stats-interval", "60"]
    log = open(work / f"run-{node.name}.log", "wb")  # noqa: SIM115 - lives as long as the run
    node.run = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env)
    assert node.run.stdout is not None
    node.reader = Reader(node.run.stdout.fileno())
    node.reader.start()


def measure(
    name: str,
    nodes: List[Node],
    seconds: float,
    caught_up: Optional[float] = None,
    begin: Optional[Callable[[], None]] = None,
) -> Phase:
    """Sample every second for ``seconds`` (or, with ``caught_up``, until every node has delivered
    past its backlog and its lag is under ``caught_up``, at most ``seconds``). ``begin`` starts
    the phase once the counters are read (the backlog is added inside the phase's time)."""
    start = time.monotonic()
    cpu0 = {n.name: cpu_seconds(n.run.pid) for n in nodes}  # type: ignore[union-attr]
    emu0 = sum(cpu_seconds(n.emulator.pid) for n in nodes)
    events0 = {n.name: n.reader.lines for n in nodes}  # type: ignore[union-attr]
    for n in nodes:
        n.lags, n.rss = [], []
    if begin is not None:
        begin()
    peak_total = 0
    done: Dict[str, Optional[float]] = {n.name: None for n in nodes}
    while True:
        time.sleep(1.0)
        now, elapsed = time.time(), time.monotonic() - start
        total = 0
        for n in nodes:
            lag = n.reader.lag(now)  # type: ignore[union-attr]
            rss = memory_kib(n.run.pid)["VmRSS"]  # type: ignore[union-attr]
            total += rss
            n.rss.append(rss)
            if lag is not None:
                n.lags.append(lag)
                past = n.reader.newest_seq > n.reader.backlog[1]  # type: ignore[union-attr]
                if caught_up is not None and done[n.name] is None and lag < caught_up and past:
                    done[n.name] = elapsed
        peak_total = max(peak_total, total)
        if elapsed >= seconds:
            break
        if caught_up is not None and all(v is not None for v in done.values()):
            break
    seconds = time.monotonic() - start
    return Phase(
        name,
        seconds,
        {n.name: (cpu_seconds(n.run.pid) - cpu0[n.name]) / seconds for n in nodes},  # type: ignore[union-attr]
        (sum(cpu_seconds(n.emulator.pid) for n in nodes) - emu0) / seconds,
        {n.name: n.reader.lines - events0[n.name] for n in nodes},  # type: ignore[union-attr]
        {n.name: memory_kib(n.run.pid)["VmHWM"] for n in nodes},  # type: ignore[union-attr]
        peak_total,
        {n.name: max(n.lags) if n.lags else float("nan") for n in nodes},
        done,
        os.getloadavg()[0],
    )


def report(phase: Phase, nodes: List[Node]) -> None:
    print(f"\n== {phase.name}: {phase.seconds:.0f} s, load average {phase.load:.1f}")
    print(
        f"{'node':8} {'events':>9} {'ev/s':>7} {'CPU %':>6} {'peak RSS MiB':>12} {'max lag s':>9}  caught up"
    )
    for n in nodes:
        after = phase.caught_up_after[n.name]
        print(
            f"{n.name:8} {phase.events[n.name]:9,} {phase.events[n.name] / phase.seconds:7.0f} "
            f"{phase.run_cpu[n.name] * 100:6.1f} {phase.peak_rss_kib[n.name] / 1024:12.1f} "
            f"{phase.max_lag[n.name]:9.1f}  {'' if after is None else f'{after:.0f} s'}"
        )
    total_events = sum(phase.events.values())
    print(
        f"total    {total_events:9,} {total_events / phase.seconds:7.0f} "
        f"{sum(phase.run_cpu.values()) * 100:6.1f} "
        f"{sum(phase.peak_rss_kib.values()) / 1024:12.1f}  (sum of peaks; highest sum at one moment "
        f"{phase.peak_total_rss_kib / 1024:.1f} MiB); emulators' CPU {phase.emulator_cpu * 100:.0f} %"
    )


def table_row(phase: Phase) -> str:
    peaks = [v / 1024 for v in phase.peak_rss_kib.values()]
    cpu = [v * 100 for v in phase.run_cpu.values()]
    slowest = max(phase.max_lag, key=lambda k: phase.max_lag[k])
    caught = [v for v in phase.caught_up_after.values() if v is not None]
    catch = ""
    if any(v is not None for v in phase.caught_up_after.values()) or phase.name == "catch-up":
        missing = sum(v is None for v in phase.caught_up_after.values())
        catch = (
            f"slowest caught up after {max(caught):.0f} s"
            if caught and not missing
            else f"{missing} not caught up"
        )
    return (
        f"| {phase.name} | {phase.seconds:.0f} s | {sum(phase.events.values()) / phase.seconds:,.0f} "
        f"| {min(peaks):.1f} / {max(peaks):.1f} | {sum(peaks):.0f} ({phase.peak_total_rss_kib / 1024:.0f}) "
        f"| {min(cpu):.1f} / {max(cpu):.1f} | {sum(cpu):.0f} | {phase.emulator_cpu * 100:.0f} "
        f"| {phase.max_lag[slowest]:.1f} s ({slowest}) {catch} | {phase.load:.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10, help="emulators and runs (10)")
    parser.add_argument("--rate", type=float, default=500.0, help="events per second per node (500)")
    parser.add_argument("--event-bytes", type=int, default=1000, help="approximate event size (1000)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring (10)")
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of the steady phase (60)")
    parser.add_argument("--backlog", type=int, default=60000, help="backlog added per node (60000)")
    parser.add_argument("--backlog-age", type=float, default=1800.0, help="its age in seconds (1800)")
    parser.add_argument("--catchup", type=float, default=90.0, help="longest catch-up phase (90)")
    parser.add_argument("--caught-up", type=float, default=10.0, help="lag under this is caught up (10)")
    parser.add_argument("--max-events", type=int, default=10000, help="run's --max-events (10000)")
    parser.add_argument("--max-timeout", type=int, default=60, help="run's --max-timeout (60)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the working files here")
    args = parser.parse_args()
    # A SIGTERM (or SIGINT, ignored in a background job) ends the script through its cleanup.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    work = Path(args.keep or tempfile.mkdtemp(prefix="kata-distributed-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KATA_EVENTS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGIN), env.get("PYTHONPATH", "")]))
    print(
        f"{args.nodes} nodes at {args.rate:g} events/s of ~{args.event_bytes} B each; {os.cpu_count()} CPUs; "
        f"Python {sys.version.split()[0]}; files in {work}",
        flush=True,
    )
    control = requests.Session()
    control.trust_env = False
    nodes: List[Node] = []
    try:
        for i in range(args.nodes):
            nodes.append(start_emulator(work, f"cn{i + 1:02d}", args.rate, args.event_bytes, env))
        for node in nodes:
            wait_ready(node, control)
        for node in nodes:
            start_run(node, work, env, args.max_events, args.max_timeout)
        time.sleep(args.warmup)
        steady = measure("steady", nodes, args.steady)
        report(steady, nodes)

        def add_backlog() -> None:
            for node in nodes:
                answer = control.post(
                    f"{node.url}/emulator/events",
                    params={"count": args.backlog, "age": args.backlog_age},
                    verify=str(node.ca_file),
                    timeout=30,
                )
                answer.raise_for_status()
                added = answer.json()
                assert node.reader is not None
                node.reader.backlog = (added["first_seq"], added["last_seq"], args.backlog_age)

        catchup = measure("catch-up", nodes, args.catchup, caught_up=args.caught_up, begin=add_backlog)
        report(catchup, nodes)
        print(
            "\n| phase | seconds | events/s (all nodes) | peak RSS per run, MiB (min / max) "
            "| peak RSS total, MiB (sum of peaks; highest sum at once) "
            "| CPU per run, % of a core (min / max) "
            "| CPU all runs, % | emulators' CPU, % | slowest node's lag | load average |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(table_row(steady))
        print(table_row(catchup))
    finally:
        for node in nodes:
            if node.run is not None and node.run.poll() is None:
                node.run.send_signal(signal.SIGTERM)
        for node in nodes:
            if node.run is not None:
                try:
                    node.run.wait(15)
                except subprocess.TimeoutExpired:
                    node.run.kill()
            node.emulator.terminate()
        for node in nodes:
            try:
                node.emulator.wait(15)
            except subprocess.TimeoutExpired:
                node.emulator.kill()
    rates = []
    for log in sorted(work.glob("run-*.log")):
        stop = [line for line in log.read_text(errors="replace").splitlines() if '"event": "stop"' in line]
        if stop:
            record = json.loads(stop[-1])
            rates.append((record["pages"] / record["uptime_seconds"], record["committed_pages"]))
    if rates:
        print(
            f"requests (pages) per second per run over its life: {min(r for r, _ in rates):.0f} to "
            f"{max(r for r, _ in rates):.0f}; commits per run: {min(c for _, c in rates)} to "
            f"{max(c for _, c in rates)}"
        )
    tracebacks = [p.name for p in work.glob("run-*.log") if b"Traceback" in p.read_bytes()]
    print(f"\nruns' stderr with a traceback: {tracebacks or 'none'}")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())

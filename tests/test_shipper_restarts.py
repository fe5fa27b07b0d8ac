"""A shipper stopped cleanly and started again, over and over, loses no event.

The promise is "duplicates, never gaps". For a pipe without acknowledgements, a line taken out of
the pipe is not yet delivered: a shipper that is stopping may read a line and then drop it (Fluent
Bit's exec input keeps reading after its engine made its last pass over the input's buffer, and
signals its child only after that). kata-events counts a line as delivered once the reader took it and stayed
alive for the settle time after, and a stop commits nothing younger. Each test here runs the real
``kata-events run`` under a shipper against an emulator producing a steady 50 events/s, stops and
restarts the shipper cleanly at random moments, lets it drain, and asserts that no EmulatorSeq is
missing. Duplicates are allowed; they are counted and printed with the seed of the random stops.

- a reader written for the test that stops as Fluent Bit's exec input does (runs everywhere): it
  stops forwarding, keeps reading and dropping lines for half a second, then SIGTERMs the child;
- syslog-ng with ``syslog-ng.conf.example`` (required under CI, which installs it);
- the real Fluent Bit with ``fluent-bit.conf.example``, both modes (skipped where it is not
  installed: set FLUENT_BIT to a binary built from source), signalled with kata-events as systemd
  stops it, and once alone.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

import pytest

from determinism import SEED
from emulator_helpers import ClientCert
from kata_events.emulator import Emulator
from shipper_helpers import (
    ROOT,
    ExecInputLikeReader,
    LineSink,
    StopStartLog,
    first_run_once,
    fluent_bit_binary,
    fluent_bit_example_config,
    kata_events_command,
    kill_left,
    processes_mentioning,
    program_string,
    report_line,
    seqs_in_ndjson,
    shipper_env,
    stop_shipper,
    syslog_ng_binary,
    syslog_ng_command,
    syslog_ng_config_version,
    syslog_ng_example_config,
    tail,
    wait_delivered,
    wait_gone,
    write_run_config,
)

#: Events per second from the emulator's steady source.
RATE = 50.0
#: Clean stops and restarts per test.
STOPS = 5
#: How long a shipper runs between two stops: a random time in this range (seconds).
RUN_BETWEEN = (1.5, 4.0)
#: How long the test reader goes on reading and dropping lines before it signals the child: twice
#: the period of the ring-buffer pass after which Fluent Bit's exec input drops what it reads.
READER_DROP_SECONDS = 0.5
#: How long the final run may take to deliver everything produced so far.
DRAIN_DEADLINE = 30.0


def steady_emulator(make_emulator: Callable[..., Emulator]) -> Emulator:
    return make_emulator(rate=RATE, backlog=0, event_bytes=600)


def run_config(tmp_path: Path, emulator: Emulator, cert: ClientCert) -> Path:
    config = tmp_path / "kata-events.toml"
    write_run_config(config, emulator, cert.cert_file, cert.key_file, tmp_path / "state.json", "auto")
    return config


class Collected:
    """The lines a reader forwarded, from every run, in arrival order (thread-safe)."""

    def __init__(self, seqs: List[int]) -> None:
        self._lock = threading.Lock()
        self._seqs: List[int] = list(seqs)

    def add(self, line: bytes) -> None:
        seq = int(json.loads(line)["EmulatorSeq"])
        with self._lock:
            self._seqs.append(seq)

    def seqs(self) -> List[int]:
        with self._lock:
            return list(self._seqs)


@pytest.mark.timeout(120)
def test_reader_stopping_like_fluent_bit_exec_loses_nothing(
    tmp_path: Path, make_emulator: Callable[..., Emulator], client_cert: ClientCert, rng: random.Random
) -> None:
    began = time.monotonic()
    emulator = steady_emulator(make_emulator)
    config = run_config(tmp_path, emulator, client_cert)
    command = f"exec {kata_events_command()} run --config {config}"
    stderr = tmp_path / "kata-events.log"
    collected = Collected(first_run_once(config, stderr))
    log = StopStartLog(SEED)
    reader: Optional[ExecInputLikeReader] = None
    dropped = 0
    try:
        for number in range(STOPS):
            reader = ExecInputLikeReader(command, collected.add, READER_DROP_SECONDS, stderr)
            time.sleep(rng.uniform(*RUN_BETWEEN))
            code = reader.stop()
            dropped += reader.dropped
            log.add(f"stop {number + 1}: {reader.forwarded} forwarded, {reader.dropped} dropped, exit {code}")
            # -SIGTERM: the signal came before kata-events had started (still the shell, or Python
            # before its handlers): nothing was sent, nothing committed.
            assert code in (0, -signal.SIGTERM), f"kata-events exited {code} on SIGTERM\n{tail(stderr)}"
        reader = ExecInputLikeReader(command, collected.add, READER_DROP_SECONDS, stderr)
        last = emulator.next_seq - 1
        report = wait_delivered(collected.seqs, last, DRAIN_DEADLINE, reader.alive)
    finally:
        if reader is not None:
            reader.kill()
    print(report_line("exec-input-like reader", report, log, time.monotonic() - began))
    assert last >= RATE * STOPS, f"too few events to mean anything: {last}"
    assert dropped > 0, f"no stop caught the reader dropping lines: {log}"
    assert not report.missing, f"{report.summary()}\n{log}\n--- kata-events:\n{tail(stderr)}"


#: Stop/start cycles after which syslog-ng is also reloaded (SIGHUP) once, mid-run.
SYSLOG_NG_RELOAD_AFTER = (1, 3)


@pytest.mark.timeout(120)
def test_syslog_ng_stopped_started_and_reloaded_loses_nothing(
    tmp_path: Path, make_emulator: Callable[..., Emulator], client_cert: ClientCert, rng: random.Random
) -> None:
    binary = syslog_ng_binary()
    began = time.monotonic()
    emulator = steady_emulator(make_emulator)
    config = run_config(tmp_path, emulator, client_cert)
    siem_file, copy_file = tmp_path / "siem.ndjson", tmp_path / "copy.ndjson"
    kata_log, ng_log = tmp_path / "kata-events.log", tmp_path / "syslog-ng.log"
    sink = LineSink(siem_file)
    ng_config = tmp_path / "syslog-ng.conf"
    ng_config.write_text(
        syslog_ng_example_config(
            syslog_ng_config_version(binary), program_string(config, kata_log), sink.port, copy_file
        ),
        encoding="utf-8",
    )
    command = syslog_ng_command(binary, ng_config, tmp_path)
    before = first_run_once(config, kata_log)
    log = StopStartLog(SEED)
    process: Optional[subprocess.Popen] = None

    def start() -> subprocess.Popen:
        with ng_log.open("ab") as out:
            return subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=shipper_env()
            )

    def diagnosis() -> str:
        return f"{log}\n--- syslog-ng:\n{tail(ng_log)}\n--- kata-events:\n{tail(kata_log)}"

    try:
        for number in range(STOPS):
            process = start()
            time.sleep(rng.uniform(*RUN_BETWEEN))
            if number in SYSLOG_NG_RELOAD_AFTER:
                process.send_signal(signal.SIGHUP)
                log.add(f"reload in run {number + 1}")
                time.sleep(rng.uniform(*RUN_BETWEEN))
            process.send_signal(signal.SIGTERM)
            code = process.wait(15)
            log.add(f"stop {number + 1}: exit {code}")
            assert code == 0, diagnosis()
        process = start()
        last = emulator.next_seq - 1
        running = process

        report = wait_delivered(
            lambda: before + seqs_in_ndjson(siem_file), last, DRAIN_DEADLINE, lambda: running.poll() is None
        )
        copy_report = wait_delivered(lambda: before + seqs_in_ndjson(copy_file), last, 5.0)
    finally:
        stop_shipper(process, 15)
        sink.close()
        leftovers = wait_gone(str(config), 5)
        kill_left(str(config))
    print(report_line("syslog-ng (tcp)", report, log, time.monotonic() - began))
    print(report_line("syslog-ng (file)", copy_report, log))
    assert not leftovers, f"kata-events still running after syslog-ng stopped: {leftovers}"
    assert last >= RATE * STOPS, f"too few events to mean anything: {last}"
    assert not report.missing, f"SIEM: {report.summary()}\n{diagnosis()}"
    assert not copy_report.missing, f"file copy: {copy_report.summary()}\n{diagnosis()}"


#: How long a clean stop of Fluent Bit may take: its grace (the example's 30 s: a SIGTERM to Fluent
#: Bit alone with a steady input lasts all of it), the 1 s timer ticks, the child's stop.
FLUENT_BIT_STOP_WAIT = 60.0
#: The stop that signals Fluent Bit alone (as `kill PID` does); the others signal kata-events with it,
#: as systemd's default stop (KillMode=control-group) does.
FLUENT_BIT_ALONE = 1


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["oneshot", "interval"])
def test_fluent_bit_stopped_and_started_loses_nothing(
    tmp_path: Path,
    make_emulator: Callable[..., Emulator],
    client_cert: ClientCert,
    mode: str,
    rng: random.Random,
) -> None:
    binary = fluent_bit_binary()
    began = time.monotonic()
    emulator = steady_emulator(make_emulator)
    config = run_config(tmp_path, emulator, client_cert)
    siem_file, fb_log = tmp_path / "siem.ndjson", tmp_path / "fluent-bit.log"
    sink = LineSink(siem_file)
    parsers = tmp_path / "kata-events-parsers.conf"
    parsers.write_bytes((ROOT / "fluent-bit-parsers.conf.example").read_bytes())
    fb_config = tmp_path / "fluent-bit.conf"
    fb_config.write_text(
        fluent_bit_example_config(mode, config, parsers, tmp_path / "storage", sink.port), encoding="utf-8"
    )
    before = first_run_once(config, tmp_path / "first-run.log")
    log = StopStartLog(SEED)
    process: Optional[subprocess.Popen] = None

    def start() -> subprocess.Popen:
        with fb_log.open("ab") as out:
            return subprocess.Popen(
                [binary, "-c", str(fb_config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=shipper_env(),
            )

    def diagnosis() -> str:
        return f"{log}\n--- Fluent Bit and kata-events:\n{tail(fb_log, 6000)}"

    try:
        for number in range(STOPS):
            process = start()
            time.sleep(rng.uniform(*RUN_BETWEEN))
            stopped = time.monotonic()
            children = [] if number == FLUENT_BIT_ALONE else processes_mentioning(str(config))
            process.send_signal(signal.SIGTERM)
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            code = process.wait(FLUENT_BIT_STOP_WAIT)
            how = "with kata-events" if number != FLUENT_BIT_ALONE else "alone"
            log.add(f"stop {number + 1} ({how}): exit {code} after {time.monotonic() - stopped:.1f} s")
            assert code == 0, diagnosis()
            # Fluent Bit waits for its child before it exits; the state file's lock is free again.
            assert not wait_gone(str(config), 5), diagnosis()
        process = start()
        last = emulator.next_seq - 1
        running = process
        report = wait_delivered(
            lambda: before + seqs_in_ndjson(siem_file), last, DRAIN_DEADLINE, lambda: running.poll() is None
        )
    finally:
        stop_shipper(process, FLUENT_BIT_STOP_WAIT)
        sink.close()
        kill_left(str(config))
    print(report_line(f"Fluent Bit ({mode})", report, log, time.monotonic() - began))
    assert last >= RATE * STOPS, f"too few events to mean anything: {last}"
    assert not report.missing, f"{report.summary()}\n{diagnosis()}"

"""A stop with Fluent Bit stalled at the other end of the pipe: kata-events empties the pipe for it.

Fluent Bit's exec input signals its child only after its engine stopped; from then on it spends a
second on every line it reads (its ring buffer is full and nothing empties it) and drops it, so a
pipe left full kept it stopping for minutes. At a stop, with Fluent Bit (by its command name) among
its ancestors holding the pipe for reading and not emptying it, kata-events reads the lines out
itself: they were never taken, so they are sent again at the next start and nothing is lost.

The reader here is a small Python program started under the name ``fluent-bit`` (a symbolic link
to the interpreter: the kernel names a process after the file it executed), which runs kata-events
as the exec input does, reads and keeps lines, then stops reading, SIGTERMs its child and reads on
to end of file. Under another name the same reader finds every line still in the pipe: only Fluent
Bit gets this.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List

import pytest

from emulator_helpers import ClientCert
from kata_events.emulator import Emulator
from run_helpers import log_records
from shipper_helpers import first_run_once, kata_events_command, shipper_env, tail, write_run_config

#: Events waiting when the reader starts: far more than it reads before it stalls.
BACKLOG = 20_000
#: Lines the reader keeps before it stops reading: fewer than the first piece kata-events writes
#: (256 KiB), so that the pipe holds the rest of that piece when the reader stalls.
KEEP = 50

READER = r"""
import os, signal, subprocess, sys, time
command, kept_path, late_path = sys.argv[1:4]
keep = int(sys.argv[4])
child = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.PIPE, start_new_session=True)
with open(kept_path, "wb") as kept:
    for _ in range(keep):
        kept.write(child.stdout.readline())
# Stalled: nothing more is read while kata-events fills the pipe, then the child is told to stop.
time.sleep(1.0)
os.killpg(child.pid, signal.SIGTERM)
code = child.wait(60)
with open(late_path, "wb") as late:
    late.write(child.stdout.read())
sys.exit(code)
"""


def run_reader(name: str, tmp_path: Path, config: Path, log: Path) -> List[bytes]:
    """Run kata-events under a reader called ``name``; the lines it read after the SIGTERM."""
    alias = tmp_path / name
    alias.symlink_to(sys.executable)
    script = tmp_path / "reader.py"
    script.write_text(READER, encoding="utf-8")
    kept, late = tmp_path / f"{name}.kept", tmp_path / f"{name}.late"
    command = f"exec {kata_events_command()} run --config {config} 2>>{log}"
    done = subprocess.run(
        [str(alias), "-I", str(script), command, str(kept), str(late), str(KEEP)],
        env=shipper_env(),
        timeout=90,
    )
    assert done.returncode == 0, f"kata-events exited {done.returncode}\n{tail(log)}"
    assert kept.read_bytes().count(b"\n") == KEEP
    data = late.read_bytes()
    assert not data or data.endswith(b"\n"), f"the reader got part of a line: {data[-200:]!r}"
    return [line for line in data.split(b"\n") if line]


def seqs(lines: List[bytes]) -> List[int]:
    return [int(json.loads(line)["EmulatorSeq"]) for line in lines]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", ["fluent-bit", "other-reader"])
def test_a_stalled_fluent_bit_gets_the_pipe_emptied_and_nothing_is_lost(
    tmp_path: Path, make_emulator: Callable[..., Emulator], client_cert: ClientCert, name: str
) -> None:
    emulator = make_emulator(backlog=0, event_bytes=600)
    config = tmp_path / "kata-events.toml"
    write_run_config(
        config, emulator, client_cert.cert_file, client_cert.key_file, tmp_path / "state.json", "auto"
    )
    log = tmp_path / "kata-events.log"
    before = first_run_once(config, log)
    emulator.add_events(BACKLOG, age=60)

    late = run_reader(name, tmp_path, config, log)
    stalled = [r for r in log_records(log.read_bytes()) if r.get("event") == "reader_stalled"]
    if name == "fluent-bit":
        # What the reader still finds is what its own buffer held, not the pipe's hundreds of lines.
        assert len(stalled) == 1, tail(log)
        assert stalled[0]["lines"] >= 100, stalled
        assert len(late) < stalled[0]["lines"] / 4, (len(late), stalled)
        # Whole lines only: the rest of a line it had begun to read was put back into the pipe.
        assert late and late[-1].endswith(b"}"), late[-1:]
        seqs(late)
    else:
        assert not stalled, tail(log)
        assert len(late) >= 100, f"the pipe held only {len(late)} lines at the stop: the test proves nothing"

    # The next start sends again what the pipe held: every event arrives.
    kept = (tmp_path / f"{name}.kept").read_bytes().split(b"\n")
    got = set(before) | set(seqs([line for line in kept if line]))
    deadline = time.monotonic() + 90
    while len(got) < BACKLOG + len(before) and time.monotonic() < deadline:
        got |= set(first_run_once(config, log))
    missing = sorted(set(range(1, BACKLOG + len(before) + 1)) - got)
    assert not missing, f"{len(missing)} events lost, first {missing[:10]}\n{tail(log)}"

"""The emulator serves a full 72,000-event page of ~2 KB events fast enough to benchmark clients with.

The target is well under one second on loopback (curl, two cores: about 0.35-0.45 s when the machine
is quiet). The assertion is looser so that a busy machine does not fail it; the figure is printed.
The client is curl in its own process: an in-process client would compete with the server for the GIL.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any, Callable

import pytest

from emulator_helpers import ClientCert
from kata_events.emulator import Emulator

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not shutil.which("curl"), reason="needs curl"),
]

PAGE_EVENTS = 72_000


def test_a_72000_event_page_of_2kb_events_is_served_quickly(
    make_emulator: Callable[..., Emulator], client_cert: ClientCert, ext_id: str, capsys: Any
) -> None:
    emulator = make_emulator(backlog=PAGE_EVENTS, event_bytes=2000)
    url = f"{emulator.events_url(ext_id)}?max_events={PAGE_EVENTS}"
    command = [
        "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
        "--cert", str(client_cert.cert_file), "--key", str(client_cert.key_file),
        "--cacert", str(emulator.ca_file), url,
    ]  # fmt: skip
    timings = []
    for _ in range(2):  # the first connection also pays for the handshake and the page selection
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
        code, size, seconds = result.stdout.split()
        assert code == "200"
        assert int(size) > PAGE_EVENTS * 1900
        timings.append(float(seconds))
    with capsys.disabled():
        print(f"\n72,000 x ~2 KB page ({int(size) / 1e6:.1f} MB) over mutual TLS, curl: {timings} s")
    # How fast is the benchmark's question (bench/run_bench.py, ~0.7 s on 2 cores); here, only
    # that serving a page of this size is not pathologically slow on a loaded machine.
    assert min(timings) < 10.0

"""Shared fixtures: throw-away client certificates and running emulators (real mutual TLS on loopback)."""

from __future__ import annotations

import os
import sys

# Compiled modules are cached, as Python does by default, even where PYTHONDONTWRITEBYTECODE is set
# (some machines set it). Otherwise every worker compiles this file, the helpers it imports and the
# test modules again (pytest rewrites each test module's asserts, ~1 s of CPU a worker), and every
# child without the tests' own environment does the same. Set before the imports below, and
# dropped from the environment the workers start with, so that this file is cached too. The caches
# go to __pycache__ folders, which git ignores.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

import random
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

import determinism
from determinism import fixed_uuid
from emulator_helpers import ClientCert, EventsClient
from kata_events import certs
from kata_events.emulator import Emulator
from run_helpers import Runs


def pytest_configure(config: pytest.Config) -> None:
    """Compile the package to bytecode once, before any worker starts.

    The suite starts over a thousand kata-events processes; where PYTHONDONTWRITEBYTECODE is set
    (tests' child environments set it, and so do some machines) nothing ever writes the package's
    .pyc files, and each process would compile every module it imports from source again (0.1 s of
    CPU each). The files go to the package's own __pycache__ folders, which git ignores.
    """
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller has done it
        return
    import compileall

    import kata_events

    compileall.compile_dir(str(Path(kata_events.__file__).parent), quiet=2)


#: Modules whose tests take 15-40 s each on 2 cores (kill loops, the release build, shipper
#: restarts, big pages, slow disks): each worker starts on them, so the run does not end waiting for one that
#: was queued last.
LONG_MODULES = (
    "test_release.py",
    "test_ack_chaos.py",
    "test_run_crashes.py",
    "test_whole_lines.py",
    "test_stop_anywhere.py",
    "test_run_resume.py",
    "test_shipper_restarts.py",
    "test_run_slow_servers.py",
    "test_stop_resend_count.py",
    "test_run_memory.py",
    "test_slow_state_disk.py",
    "test_syslog_ng_e2e.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Deal the long tests out to the heads of the workers' first shares.

    pytest-xdist's work-stealing scheduler gives each of its ``n`` workers a contiguous share of the
    collection at first (the share sizes below are its own arithmetic) and lets idle workers steal
    from the tail of a busy one's. Long tests at the head of every share start at once and finish
    while the short ones still balance the load. Only the order changes: every worker computes the
    same one, as xdist requires.
    """
    workers = getattr(config, "workerinput", {}).get("workercount")
    if not workers or workers < 2:
        return
    long = [item for item in items if item.path.name in LONG_MODULES]
    short = [item for item in items if item.path.name not in LONG_MODULES]
    ordered: List[pytest.Item] = []
    remaining = len(items)
    for worker in range(workers):
        share = remaining // (workers - worker)
        head = long[worker::workers][:share]
        ordered += head
        take = share - len(head)
        ordered += short[:take]
        del short[:take]
        remaining -= share
    dealt = {id(item) for item in ordered}
    ordered += [item for item in long if id(item) not in dealt] + short
    items[:] = ordered


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"test seed: {determinism.SEED} (KATA_TEST_SEED changes it); "
        f"hypothesis profile: {determinism.PROFILE} (HYPOTHESIS_PROFILE=dev explores); "
        f"share of repeated rounds: {determinism.ROUNDS_SHARE:g} (KATA_TEST_ROUNDS)"
    )


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """This test's random source: the same draws on every run with the same KATA_TEST_SEED."""
    request.node.user_properties.append(("seed", determinism.SEED))
    return determinism.rng_for(request.node.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    seeds = [value for name, value in item.user_properties if name == "seed"]
    if report.failed and seeds:
        report.sections.append(("test seed", f"KATA_TEST_SEED={seeds[0]} replays this test's random choices"))


@pytest.fixture(scope="session")
def _cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client-certs")


@pytest.fixture(scope="session")
def make_client_cert(_cert_dir: Path) -> Callable[..., ClientCert]:
    """``make_client_cert(name, openssl=False)``: a new self-signed client certificate.

    With ``openssl=True`` it is made by ``openssl req -x509 -newkey rsa:2048 -nodes``, the way
    administrators make one; otherwise by ``kata_events.certs`` (EC, faster).
    """
    counter = [0]

    def make(name: str = "client", openssl: bool = False) -> ClientCert:
        counter[0] += 1
        stem = _cert_dir / f"{name}-{counter[0]}"
        cert_file, key_file = stem.with_suffix(".crt"), stem.with_suffix(".key")
        if openssl:
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    f"/CN={name}",
                    "-days",
                    "2",
                    "-keyout",
                    str(key_file),
                    "-out",
                    str(cert_file),
                ],
                check=True,
                capture_output=True,
            )
        else:
            certs.make_self_signed_cert(name, days=2, key_type="ec").write(cert_file, key_file)
        return ClientCert(cert_file, key_file, certs.sha256_fingerprint(cert_file.read_bytes()))

    return make


@pytest.fixture(scope="session")
def client_cert(make_client_cert: Callable[..., ClientCert]) -> ClientCert:
    return make_client_cert("default")


@pytest.fixture
def ext_id() -> str:
    return fixed_uuid()


@pytest.fixture
def make_emulator(tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    """``make_emulator(**options)``: a started emulator on a free port, stopped after the test.

    Defaults suit tests: auto approval, no backlog, no steady source, a short default long poll.
    """
    started: List[Emulator] = []

    def make(**options: Any) -> Emulator:
        settings: Dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "state_dir": tmp_path / f"emulator-{len(started)}",
            "approve": "auto",
            "backlog": 0,
            "rate": 0,
            "event_bytes": 600,
            "default_max_timeout": 1.0,
        }
        settings.update(options)
        emulator = Emulator(**settings).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(make_emulator: Callable[..., Emulator]) -> Emulator:
    return make_emulator()


@pytest.fixture
def make_client() -> Iterator[Callable[..., EventsClient]]:
    clients: List[EventsClient] = []

    def make(emulator: Emulator, ext_id: str, cert: ClientCert | None) -> EventsClient:
        client = EventsClient(emulator, ext_id, cert)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(emulator: Emulator, ext_id: str, client_cert: ClientCert, make_client: Any) -> EventsClient:
    return make_client(emulator, ext_id, client_cert)


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    """Real ``kata-events run`` processes for one test, all stopped at its end."""
    from run_helpers import Runs

    r = Runs(tmp_path)
    yield r
    r.close()

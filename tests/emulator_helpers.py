"""Helpers for the emulator tests: a client certificate on disk, a small events-API client."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import requests

from kata_events.emulator import Emulator


@dataclass
class ClientCert:
    """A client certificate and key on disk."""

    cert_file: Path
    key_file: Path
    fingerprint: str

    @property
    def pair(self) -> Tuple[str, str]:
        return str(self.cert_file), str(self.key_file)


class EventsClient:
    """A small requests-based client for the events API of one emulator, for tests."""

    def __init__(self, emulator: Emulator, ext_id: str, cert: Optional[ClientCert]) -> None:
        self.emulator = emulator
        self.ext_id = ext_id
        self.session = requests.Session()
        # Otherwise REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE in the environment override session.verify.
        self.session.trust_env = False
        self.session.verify = str(emulator.ca_file)
        if cert is not None:
            self.session.cert = cert.pair

    def get(self, timeout: float = 10.0, **params: Any) -> requests.Response:
        return self.session.get(self.emulator.events_url(self.ext_id), params=params, timeout=timeout)

    def page(self, **params: Any) -> Dict[str, Any]:
        response = self.get(**params)
        assert response.status_code == 200, response.text
        return response.json()

    def control(self, method: str, name: str, **kwargs: Any) -> requests.Response:
        return requests.request(
            method,
            f"{self.emulator.url}/emulator/{name}",
            verify=str(self.emulator.ca_file),
            timeout=10,
            **kwargs,
        )

    def close(self) -> None:
        self.session.close()


def seqs(page: Dict[str, Any]) -> List[int]:
    """The EmulatorSeq numbers of a page's events."""
    return [event["EmulatorSeq"] for event in page["events"]]


def wait_for(ready: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """``ready()``'s first true answer, polled until ``timeout`` (generous: a test waits for the
    event it needs, it does not bet on how fast a loaded machine gets there)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = ready()
        if answer:
            return answer
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        time.sleep(0.02)

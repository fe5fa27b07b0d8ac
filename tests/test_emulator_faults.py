"""Every fault kind the emulator injects, its count/after scheduling, and the spec syntax."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

import pytest
import requests

from emulator_helpers import ClientCert, EventsClient, seqs
from kata_events.emulator import Emulator, Fault, FaultSpecError
from kata_events.emulator.faults import FAULT_KINDS, FaultQueue

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def busy(make_emulator: Callable[..., Emulator]) -> Emulator:
    return make_emulator(backlog=200, event_bytes=800)


@pytest.fixture
def busy_client(busy: Emulator, client_cert: ClientCert, make_client: Any, ext_id: str) -> EventsClient:
    return make_client(busy, ext_id, client_cert)


@pytest.mark.parametrize("kind, reason", [("500", "Internal Server Error"), ("503", "Service Unavailable")])
def test_server_errors(busy: Emulator, busy_client: EventsClient, kind: str, reason: str) -> None:
    busy.inject(kind)
    response = busy_client.get(max_events=5)
    assert response.status_code == int(kind)
    assert response.json() == {"error": reason}
    assert busy_client.get(max_events=5).status_code == 200  # count defaults to 1


def test_bad_gateway_has_an_html_body(busy: Emulator, busy_client: EventsClient) -> None:
    busy.inject("502")
    response = busy_client.get()
    assert response.status_code == 502
    assert response.headers["Content-Type"] == "text/html"
    assert b"<title>502 Bad Gateway</title>" in response.content


def test_too_many_requests_carries_retry_after(busy: Emulator, busy_client: EventsClient) -> None:
    busy.inject("429", retry_after=7)
    response = busy_client.get()
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"


def test_drop_cuts_the_body_and_the_same_token_serves_the_page_again(
    busy: Emulator, busy_client: EventsClient
) -> None:
    token = busy_client.page(max_events=10)["continuationToken"]
    busy.inject("drop")
    response = busy_client.session.get(
        busy.events_url(busy_client.ext_id),
        params={"max_events": 50, "continuation_token": token},
        timeout=5,
        stream=True,
    )
    assert response.status_code == 200
    announced = int(response.headers["Content-Length"])
    received = b""
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        for chunk in response.iter_content(1024):
            received += chunk
    assert 0 < len(received) < announced
    page = busy_client.page(max_events=50, continuation_token=token)  # at-least-once: retry the same token
    assert seqs(page) == list(range(11, 61))
    assert len(json.dumps(page["events"], ensure_ascii=False, separators=(",", ":"))) + 60 > announced / 2


def test_truncated_body_is_a_consistent_200_with_broken_json(
    busy: Emulator, busy_client: EventsClient
) -> None:
    busy.inject("truncated")
    response = busy_client.get(max_events=20)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert response.content.startswith(b'{"events":[{"EmulatorSeq":1,')
    with pytest.raises(ValueError):
        json.loads(response.content)
    # Nothing was consumed: a fresh subscription starts from the oldest event again.
    assert seqs(busy_client.page(max_events=3)) == [1, 2, 3]


def test_body_without_events(busy: Emulator, busy_client: EventsClient) -> None:
    busy.inject("no_events")
    body = busy_client.page(max_events=5)
    assert "events" not in body and body["continuationToken"]


def test_body_without_token(busy: Emulator, busy_client: EventsClient) -> None:
    busy.inject("no_token")
    body = busy_client.page(max_events=5)
    assert "continuationToken" not in body and seqs(body) == [1, 2, 3, 4, 5]


def test_slow_delays_the_first_byte(busy: Emulator, busy_client: EventsClient) -> None:
    busy.inject("slow", delay=1.5)
    started = time.monotonic()
    assert seqs(busy_client.page(max_events=2)) == [1, 2]
    assert time.monotonic() - started >= 1.5


def test_hang_never_answers_and_stop_stays_prompt(busy: Emulator, busy_client: EventsClient) -> None:
    busy.inject("hang")
    with pytest.raises(requests.exceptions.ReadTimeout):
        busy_client.get(timeout=0.5)
    assert busy_client.get(max_events=1).status_code == 200  # only one request hangs

    busy.inject("hang")
    outcome: list = []

    def request() -> None:
        try:
            outcome.append(busy_client.get(timeout=20))
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    busy.stop()
    assert time.monotonic() - started < 10  # the hanging request (20 s) did not hold the stop
    thread.join(30)
    assert outcome and isinstance(outcome[0], requests.RequestException)


def test_fault_401_revokes_the_approval(
    busy: Emulator, busy_client: EventsClient, client_cert: ClientCert
) -> None:
    assert busy_client.get(max_events=1).status_code == 200
    busy.inject("401")
    assert busy_client.get().status_code == 401
    assert not busy.is_approved(busy_client.ext_id, client_cert.fingerprint)


def test_fault_401_needs_reapproval_in_manual_mode(
    make_emulator: Callable[..., Emulator], client_cert: ClientCert, make_client: Any, ext_id: str
) -> None:
    emulator = make_emulator(approve="manual", backlog=3)
    emulator.approve(ext_id, client_cert.fingerprint)
    client = make_client(emulator, ext_id, client_cert)
    assert client.get(max_events=1).status_code == 200
    emulator.inject("401")
    assert client.get().status_code == 401
    assert client.get().status_code == 401  # stays revoked
    emulator.approve(ext_id)
    assert client.get(max_events=1).status_code == 200


def test_fault_404_loses_the_subscription(busy: Emulator, busy_client: EventsClient) -> None:
    token = busy_client.page(max_events=3)["continuationToken"]
    busy.inject("404")
    response = busy_client.get(continuation_token=token)
    assert response.status_code == 404 and "Subscription not found" in response.text
    assert busy_client.get(continuation_token=token).status_code == 404  # really gone
    assert busy.status()["subscriptions"] == []


def test_count_and_after(busy: Emulator, busy_client: EventsClient) -> None:
    busy.inject("503x2@1")
    busy.inject("500")
    codes = [busy_client.get(max_events=1).status_code for _ in range(5)]
    assert codes == [200, 503, 503, 500, 200]


def test_faults_through_the_control_endpoint(busy: Emulator, busy_client: EventsClient) -> None:
    response = busy_client.control("POST", "faults", json=[{"kind": "503", "count": 2}, "429:retry_after=3"])
    assert response.status_code == 200
    assert [f["kind"] for f in response.json()["queued"]] == ["503", "429"]
    assert [f["kind"] for f in busy_client.control("GET", "status").json()["faults"]] == ["503", "429"]
    codes = [busy_client.get(max_events=1).status_code for _ in range(4)]
    assert codes == [503, 503, 429, 200]
    assert busy_client.control("POST", "faults", json={"kind": "teapot"}).status_code == 400
    assert busy_client.control("POST", "faults", data=b"{not json").status_code == 400


def test_faults_do_not_touch_control_endpoints(busy: Emulator, busy_client: EventsClient) -> None:
    busy.inject("503")
    assert busy_client.control("GET", "status").status_code == 200
    assert busy_client.get().status_code == 503


def test_faults_given_at_construction(
    make_emulator: Callable[..., Emulator], client_cert, make_client, ext_id
) -> None:
    emulator = make_emulator(backlog=1, faults=["503", {"kind": "500"}])
    client = make_client(emulator, ext_id, client_cert)
    assert [client.get().status_code for _ in range(3)] == [503, 500, 200]


# -- spec syntax ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("503", Fault("503")),
        ("503x3", Fault("503", count=3)),
        ("drop@10", Fault("drop", after=10)),
        ("429:retry_after=2", Fault("429", retry_after=2)),
        ("slow:delay=5,count=2", Fault("slow", delay=5, count=2)),
        ("no_tokenx2@1", Fault("no_token", count=2, after=1)),
        ("TRUNCATED", Fault("truncated")),
        ("hang", Fault("hang")),
        ("404:after=3", Fault("404", after=3)),
    ],
)
def test_fault_specs(spec: str, expected: Fault) -> None:
    assert Fault.parse(spec) == expected


@pytest.mark.parametrize(
    "spec", ["", "418", "503x0", "503x", "drop@", "slow:delay", "slow:speed=3", "429:retry_after=-1"]
)
def test_bad_fault_specs(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        Fault.parse(spec)


def test_every_kind_is_documented_and_parses() -> None:
    for kind in FAULT_KINDS:
        assert Fault.parse(kind).kind == kind


def test_queue_runs_faults_in_order() -> None:
    queue = FaultQueue()
    queue.add(Fault.parse("503x2@1"))
    queue.add(Fault.parse("drop"))
    hits = [queue.take() for _ in range(5)]
    assert [h.kind if h else None for h in hits] == [None, "503", "503", "drop", None]
    assert len(queue) == 0


@pytest.mark.parametrize("spec", ["huge_event:size=5000000", "deep_event:depth=70000"])
def test_hostile_events_are_made_as_sent_and_their_length_is_exact(spec: str) -> None:
    from kata_events.emulator.faults import hostile_event

    fault = Fault.parse(spec)
    length, chunks = hostile_event(fault)
    sizes, body = [], b""
    for chunk in chunks:
        sizes.append(len(chunk))
        body += chunk
    assert len(body) == length
    assert max(sizes) <= 2 << 20  # never the whole event at once
    if fault.kind == "deep_event":
        assert body.count(b"[") == body.count(b"]") == 70000
    else:
        assert len(json.loads(body)["Parts"]) > 300

"""The emulator's events API over real mutual TLS: approval, subscriptions, long polling, retention."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from typing import Any, Callable

import pytest
import requests

from emulator_helpers import ClientCert, EventsClient, seqs, wait_for
from kata_events.config.urls import format_fingerprint
from kata_events.emulator import Emulator
from kata_events.emulator import certs as emulator_certs

pytestmark = pytest.mark.timeout(60)


# -- TLS and approval -----------------------------------------------------------------------------


def test_an_openssl_self_signed_certificate_is_accepted_and_identified(
    make_emulator: Callable[..., Emulator],
    make_client_cert: Callable[..., ClientCert],
    make_client: Any,
    ext_id: str,
) -> None:
    emulator = make_emulator(approve="manual", backlog=3)
    cert = make_client_cert("openssl-made", openssl=True)
    client = make_client(emulator, ext_id, cert)
    response = client.get(max_events=5)
    assert response.status_code == 401
    assert response.json() == {"error": "Unauthorized"}
    pending = emulator.status()["pending"]
    assert [(p["external_system_id"], p["fingerprint"]) for p in pending] == [(ext_id, cert.fingerprint)]


def test_manual_approval_flow(
    make_emulator: Callable[..., Emulator],
    make_client_cert: Callable[..., ClientCert],
    make_client: Any,
    ext_id: str,
) -> None:
    emulator = make_emulator(approve="manual", backlog=10)
    first = make_client_cert("first")
    second = make_client_cert("second")
    client = make_client(emulator, ext_id, first)
    assert client.get(max_events=5).status_code == 401
    assert client.get(max_events=5).status_code == 401  # still pending, nothing changes

    approved = client.control("POST", "approve", params={"external_system_id": ext_id})
    assert approved.status_code == 200
    assert approved.json()["approved"] == [{"external_system_id": ext_id, "fingerprint": first.fingerprint}]
    assert seqs(client.page(max_events=5)) == [1, 2, 3, 4, 5]

    # A new certificate for the same external system needs its own approval.
    other = make_client(emulator, ext_id, second)
    assert other.get(max_events=5).status_code == 401
    colon_form = format_fingerprint(second.fingerprint)
    assert (
        client.control(
            "POST", "approve", params={"external_system_id": ext_id, "fingerprint": colon_form}
        ).status_code
        == 200
    )
    assert other.get(max_events=5).status_code == 200

    # Revoke: both certificates of the id lose access.
    revoked = client.control("POST", "revoke", params={"external_system_id": ext_id})
    assert revoked.status_code == 200
    assert len(revoked.json()["revoked"]) == 2
    assert client.get(max_events=5).status_code == 401
    assert other.get(max_events=5).status_code == 401


def test_approval_is_per_external_system_id(
    make_emulator: Callable[..., Emulator], client_cert: ClientCert, make_client: Any, ext_id: str
) -> None:
    emulator = make_emulator(approve="manual", backlog=1)
    emulator.approve(ext_id, client_cert.fingerprint)
    assert make_client(emulator, ext_id, client_cert).get().status_code == 200
    other_id = "6f1c2b1e-0000-4000-8000-000000000000"
    assert make_client(emulator, other_id, client_cert).get().status_code == 401


def test_approve_without_pending_certificate_is_404(emulator: Emulator, client: EventsClient) -> None:
    response = client.control("POST", "approve", params={"external_system_id": client.ext_id})
    assert response.status_code == 404
    assert client.control("POST", "approve", params={}).status_code == 400
    bad = client.control("POST", "approve", params={"external_system_id": client.ext_id, "fingerprint": "zz"})
    assert bad.status_code == 400


def test_a_client_without_certificate_gets_401_but_may_use_control_endpoints(
    emulator: Emulator, make_client: Any, ext_id: str
) -> None:
    anonymous = make_client(emulator, ext_id, None)
    assert anonymous.get().status_code == 401
    assert anonymous.control("GET", "status").status_code == 200


def test_approvals_persist_in_the_state_dir(
    tmp_path: Any, client_cert: ClientCert, make_client: Any, ext_id: str
) -> None:
    state = tmp_path / "state"
    with Emulator(listen="127.0.0.1:0", state_dir=state, approve="manual", backlog=1, rate=0) as emulator:
        emulator.approve(ext_id, client_cert.fingerprint)
        ca_before = emulator.ca_file.read_bytes()
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    for name in ("ca.crt", "ca.key", "server.crt", "server.key", "approvals.json"):
        assert stat.S_IMODE(os.stat(state / name).st_mode) == 0o600, name
    with Emulator(listen="127.0.0.1:0", state_dir=state, approve="manual", backlog=1, rate=0) as emulator:
        assert emulator.ca_file.read_bytes() == ca_before  # the CA is reused, clients keep trusting it
        client = make_client(emulator, ext_id, client_cert)
        assert client.get(max_events=1).status_code == 200


def test_server_certificate_names_localhost_and_loopback(emulator: Emulator) -> None:
    names = emulator_certs.cert_subject_alt_names(emulator.server_cert_file.read_bytes())
    assert {"localhost", "127.0.0.1"} <= set(names)
    # Verified by hostname through the emulator's CA.
    response = requests.get(
        f"https://localhost:{emulator.port}/emulator/status", verify=str(emulator.ca_file), timeout=5
    )
    assert response.status_code == 200


# -- subscriptions and tokens ---------------------------------------------------------------------


def test_token_chain_reads_the_backlog_in_order(
    make_emulator: Callable[..., Emulator], client_cert, make_client, ext_id
) -> None:
    emulator = make_emulator(backlog=12)
    client = make_client(emulator, ext_id, client_cert)
    first = client.page(max_events=5)
    second = client.page(max_events=5, continuation_token=first["continuationToken"])
    third = client.page(max_events=5, continuation_token=second["continuationToken"])
    assert (seqs(first), seqs(second), seqs(third)) == ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12])
    tokens = {first["continuationToken"], second["continuationToken"], third["continuationToken"]}
    assert len(tokens) == 3  # a new token every time


def test_an_old_token_replays_from_its_position(make_emulator, client_cert, make_client, ext_id) -> None:
    emulator = make_emulator(backlog=10)
    client = make_client(emulator, ext_id, client_cert)
    first = client.page(max_events=3)
    second = client.page(max_events=3, continuation_token=first["continuationToken"])
    replay = client.page(max_events=3, continuation_token=first["continuationToken"])
    assert seqs(second) == seqs(replay) == [4, 5, 6]
    assert replay["continuationToken"] != second["continuationToken"]
    # The newest token carries on after the replay.
    assert seqs(client.page(max_events=3, continuation_token=replay["continuationToken"])) == [7, 8, 9]


def test_unknown_token_is_subscription_not_found(client: EventsClient, emulator: Emulator) -> None:
    response = client.get(continuation_token="made-up-token")
    assert response.status_code == 404
    assert "Subscription not found" in response.text


def test_a_token_belongs_to_its_external_system(make_emulator, client_cert, make_client, ext_id) -> None:
    emulator = make_emulator(backlog=3)
    token = make_client(emulator, ext_id, client_cert).page(max_events=1)["continuationToken"]
    other = make_client(emulator, "11111111-2222-4333-8444-555555555555", client_cert)
    assert other.get(continuation_token=token).status_code == 404


def test_filter_is_bound_on_the_first_request_and_ignored_later(
    make_emulator, client_cert, make_client, ext_id
) -> None:
    emulator = make_emulator(backlog=300)
    client = make_client(emulator, ext_id, client_cert)
    wanted = "Ioa.Severity == 'High'"
    page = client.page(max_events=5, filter=wanted)
    assert page["events"] and all(e["Ioa"]["Severity"] == "High" for e in page["events"])
    later = client.page(
        max_events=5, filter="EventType == 'nothing-matches'", continuation_token=page["continuationToken"]
    )
    assert later["events"] and all(e["Ioa"]["Severity"] == "High" for e in later["events"])
    # The filtered subscription sees exactly the matching subsequence, in order.
    expected = [s for s in range(1, 301) if emulator.event(s).get("Ioa", {}).get("Severity") == "High"][:10]
    assert seqs(page) + seqs(later) == expected


def test_filter_on_per_event_fields(make_emulator, client_cert, make_client, ext_id) -> None:
    emulator = make_emulator(backlog=20)
    client = make_client(emulator, ext_id, client_cert)
    page = client.page(max_events=50, filter="EmulatorSeq == 7 or EmulatorSeq == 12")
    assert seqs(page) == [7, 12]


def test_a_filtered_subscription_advances_past_non_matching_events(
    make_emulator, client_cert, make_client, ext_id
) -> None:
    emulator = make_emulator(backlog=50)
    client = make_client(emulator, ext_id, client_cert)
    page = client.page(max_events=10, filter="EventType == 'none'", max_timeout="PT0.2S")
    assert page["events"] == []
    emulator.add_events(5)
    # Still nothing: the 55 events scanned so far never match; the token kept its place.
    again = client.page(continuation_token=page["continuationToken"], max_timeout="PT0.2S")
    assert again["events"] == []


def test_served_bytes_are_exactly_event_bytes(make_emulator, client_cert, make_client, ext_id) -> None:
    emulator = make_emulator(backlog=40, event_bytes=2000)
    client = make_client(emulator, ext_id, client_cert)
    response = client.get(max_events=40)
    assert response.headers["Content-Type"] == "application/octet-stream"
    body = response.content
    token = response.json()["continuationToken"]
    expected = (
        b'{"events":['
        + b",".join(emulator.event_bytes(s) for s in range(1, 41))
        + b'],"continuationToken":"'
        + token.encode()
        + b'"}'
    )
    assert body == expected
    assert int(response.headers["Content-Length"]) == len(body)


def test_events_look_like_central_node_events(make_emulator, client_cert, make_client, ext_id) -> None:
    emulator = make_emulator(backlog=256, event_bytes=1500)
    client = make_client(emulator, ext_id, client_cert)
    body = client.get(max_events=256).content
    events = json.loads(body)["events"]
    sizes = [len(emulator.event_bytes(s)) for s in range(1, 257)]
    assert 1300 < sum(sizes) / len(sizes) < 1700
    assert "иванов".encode() in body and b"\\u04" not in body  # raw UTF-8, not \u-escaped
    assert b"C:\\\\Windows\\\\" in body  # backslashes JSON-escaped
    assert b'\\"' in body and b"\\t" in body and b"\\n" in body
    assert any("{" in e.get("RegistryKey", "") for e in events)
    with_ioa = [e for e in events if "Ioa" in e]
    assert with_ioa and all({"Severity", "Confidence", "Rules"} <= set(e["Ioa"]) for e in with_ioa)
    assert all({"Id", "Name", "Techniques", "Tactics"} <= set(r) for e in with_ioa for r in e["Ioa"]["Rules"])
    assert all(list(e)[0] == "EmulatorSeq" for e in events)
    for key in (
        "EventType",
        "HostName",
        "HostIp",
        "UserName",
        "OsFamily",
        "OsVersion",
        "FileName",
        "Timestamp",
    ):
        assert all(key in e for e in events), key
    assert len({e["EventType"] for e in events}) >= 12


def test_events_are_deterministic_from_seed_seq_and_timestamp(tmp_path) -> None:
    kwargs = dict(listen="127.0.0.1:0", approve="auto", backlog=5, rate=0, seed=42)
    with Emulator(state_dir=tmp_path / "a", **kwargs) as a, Emulator(state_dir=tmp_path / "b", **kwargs) as b:
        for seq in range(1, 6):
            ea, eb = a.event(seq), b.event(seq)
            ea.pop("Timestamp"), eb.pop("Timestamp")
            assert ea == eb


def test_steady_rate_produces_events_with_increasing_timestamps(
    make_emulator, client_cert, make_client, ext_id
) -> None:
    emulator = make_emulator(rate=50)
    client = make_client(emulator, ext_id, client_cert)
    wait_for(lambda: emulator.status()["next_seq"] > 8, "eight events from the steady source")
    page = client.page(max_events=1000)
    assert len(page["events"]) >= 8
    assert seqs(page) == list(range(1, len(page["events"]) + 1))
    stamps = [e["Timestamp"] for e in page["events"]]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] / 1e6 - time.time()) < 5


# -- long polling ---------------------------------------------------------------------------------


def test_long_poll_returns_as_soon_as_events_arrive(emulator: Emulator, client: EventsClient) -> None:
    token = client.page(max_timeout="PT0.1S")["continuationToken"]
    timer = threading.Timer(0.5, emulator.add_events, args=(3,))
    timer.start()
    started = time.monotonic()
    page = client.page(max_events=100, max_timeout="PT60S", continuation_token=token)
    elapsed = time.monotonic() - started
    timer.join()
    # The events came after the request was made, and long before its 60 s were out.
    assert seqs(page) == [1, 2, 3]
    assert elapsed < 30


def test_long_poll_times_out_with_an_empty_page_and_a_token(emulator: Emulator, client: EventsClient) -> None:
    started = time.monotonic()
    page = client.page(max_timeout="PT2S")
    elapsed = time.monotonic() - started
    assert page["events"] == [] and page["continuationToken"]
    assert 2 <= elapsed < 30
    emulator.add_events(2)
    assert seqs(client.page(continuation_token=page["continuationToken"])) == [1, 2]


def test_available_events_are_served_at_once(make_emulator, client_cert, make_client, ext_id) -> None:
    emulator = make_emulator(backlog=3)
    client = make_client(emulator, ext_id, client_cert)
    started = time.monotonic()
    page = client.page(max_events=100, max_timeout="PT60S")
    assert seqs(page) == [1, 2, 3]  # does not wait to fill the page
    assert time.monotonic() - started < 30


def test_long_poll_wakes_for_the_steady_source(make_emulator, client_cert, make_client, ext_id) -> None:
    emulator = make_emulator(rate=2)
    client = make_client(emulator, ext_id, client_cert)
    started = time.monotonic()
    page = client.page(max_timeout="PT60S")
    if not page["events"]:  # the first event may be due only after the first request
        page = client.page(max_timeout="PT60S", continuation_token=page["continuationToken"])
    assert page["events"]
    assert time.monotonic() - started < 30  # an event every 0.5 s, not the 60 s long poll


def test_stop_is_prompt_during_long_polls(make_emulator, client_cert, make_client, ext_id) -> None:
    emulator = make_emulator()
    client = make_client(emulator, ext_id, client_cert)
    results: list = []

    def poll() -> None:
        try:
            results.append(client.get(max_timeout="PT60S", timeout=30).status_code)
        except requests.RequestException as exc:
            results.append(exc)

    thread = threading.Thread(target=poll)
    thread.start()
    wait_for(lambda: emulator.status()["subscriptions"], "the request")
    # The subscription exists as soon as the request is read; a stop before its handler starts to
    # wait would be answered with an empty page. Half a second puts the stop inside the 60 s wait.
    time.sleep(0.5)
    started = time.monotonic()
    emulator.stop()
    assert time.monotonic() - started < 30  # the 60 s long poll did not hold the stop
    thread.join(30)
    assert results and not isinstance(results[0], int)


# -- retention ------------------------------------------------------------------------------------


def test_events_older_than_retention_are_dropped(make_emulator, client_cert, make_client, ext_id) -> None:
    retention = 30.0
    emulator = make_emulator(retention=retention)
    emulator.add_events(5, age=retention - 6)  # 1..5 leave the window six seconds from now
    client = make_client(emulator, ext_id, client_cert)
    first = client.page(max_events=2)
    assert seqs(first) == [1, 2]
    # Replaying the first token keeps the subscription in use without moving it.
    assert seqs(client.page(max_events=1, continuation_token=first["continuationToken"])) == [3]
    wait_for(lambda: emulator.oldest_seq == 6, "the backlog (1..5) to leave the retention window")
    emulator.add_events(3)  # seq 6..8, with the whole window ahead of them
    # The lagging subscription silently skips what was dropped.
    page = client.page(max_events=10, continuation_token=first["continuationToken"])
    assert seqs(page) == [6, 7, 8]
    assert emulator.oldest_seq == 6
    with pytest.raises(KeyError):
        emulator.event_bytes(3)


def test_idle_subscription_expires(make_emulator, client_cert, make_client, ext_id) -> None:
    emulator = make_emulator(backlog=2, retention=0.5)
    client = make_client(emulator, ext_id, client_cert)
    token = client.page(max_events=1)["continuationToken"]
    time.sleep(0.7)
    response = client.get(continuation_token=token)
    assert response.status_code == 404
    assert "Subscription not found" in response.text


def test_a_used_subscription_does_not_expire(make_emulator, client_cert, make_client, ext_id) -> None:
    emulator = make_emulator(backlog=0, retention=2.0)
    client = make_client(emulator, ext_id, client_cert)
    token = client.page(max_timeout="PT0.1S")["continuationToken"]
    for _ in range(6):  # 3 s in all, each use well inside the 2 s window after the one before
        time.sleep(0.5)
        token = client.page(max_timeout="PT0.1S", continuation_token=token)["continuationToken"]


# -- parameter validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, reason",
    [
        ({"max_events": "0"}, "max_events"),
        ({"max_events": "72001"}, "max_events"),
        ({"max_events": "-3"}, "max_events"),
        ({"max_events": "ten"}, "max_events"),
        ({"max_timeout": "PT0S"}, "max_timeout"),
        ({"max_timeout": "PT301S"}, "max_timeout"),
        ({"max_timeout": "60"}, "max_timeout"),
        ({"max_timeout": "P1D"}, "max_timeout"),
        ({"filter": "(Ioa.Severity == 'High'))"}, "filter: unexpected token ')' at column 25"),
        ({"filter": "EventType = 'x'"}, "at column 11"),
    ],
)
def test_bad_parameters_get_400_with_a_reason(client: EventsClient, params: dict, reason: str) -> None:
    response = client.get(**params)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "Bad Request"
    assert reason in body["reason"]


def test_max_events_bounds_and_default(make_emulator, client_cert, make_client, ext_id) -> None:
    emulator = make_emulator(backlog=1500, max_events_limit=2000)
    client = make_client(emulator, ext_id, client_cert)
    assert len(client.page()["events"]) == 1000  # default when absent
    assert len(client.page(max_events=1)["events"]) == 1
    assert client.get(max_events=2001).status_code == 400
    assert len(client.page(max_events=2000, max_timeout="PT300S")["events"]) == 1500


def test_an_external_system_id_must_be_a_uuid(emulator: Emulator, make_client, client_cert) -> None:
    response = make_client(emulator, "not-a-uuid", client_cert).get()
    assert response.status_code == 400
    assert "UUID" in response.json()["reason"]


def test_unknown_paths_and_methods(client: EventsClient, emulator: Emulator) -> None:
    assert client.session.get(f"{emulator.url}/kata/other", timeout=5).status_code == 404
    assert client.session.post(emulator.events_url(client.ext_id), timeout=5).status_code == 405
    assert client.control("POST", "status").status_code == 405
    response = client.get(max_events=1, max_timeout="PT0.1S")
    assert response.status_code == 200 and "Subscription not found" not in response.text


# -- control endpoints ----------------------------------------------------------------------------


def test_control_events_and_status(emulator: Emulator, client: EventsClient) -> None:
    added = client.control("POST", "events", params={"count": 4})
    assert added.json() == {"added": 4, "first_seq": 1, "last_seq": 4}
    client.page(max_events=2)
    status = client.control("GET", "status").json()
    assert status["next_seq"] == 5 and status["oldest_seq"] == 1
    assert status["requests_served"] == 1 == emulator.requests_served
    assert status["approved"][0]["external_system_id"] == client.ext_id
    assert status["subscriptions"][0]["external_system_id"] == client.ext_id
    assert status["faults"] == []
    assert client.control("POST", "events", params={"count": "-1"}).status_code == 400


def test_events_can_be_added_as_an_old_backlog(emulator: Emulator, client: EventsClient) -> None:
    before = time.time()
    client.control("POST", "events", params={"count": 3, "age": 6000})
    emulator.add_events(2, age=2400)
    events = client.page(max_events=10)["events"]
    ages = [before - e["Timestamp"] / 1e6 for e in events]
    assert [round(a / 60) for a in ages] == [100, 100, 100, 40, 40]
    assert client.control("POST", "events", params={"count": 1, "age": "soon"}).status_code == 400
    assert client.control("POST", "events", params={"count": 1, "age": 9000}).status_code == 400


def test_connections_are_kept_alive(make_emulator, client_cert, make_client, ext_id) -> None:
    emulator = make_emulator(backlog=30)
    client = make_client(emulator, ext_id, client_cert)
    token = None
    sockets = set()
    for _ in range(5):
        params = {"max_events": 5}
        if token:
            params["continuation_token"] = token
        response = client.session.get(emulator.events_url(ext_id), params=params, timeout=5, stream=True)
        sockets.add(id(response.raw.connection))
        token = response.json()["continuationToken"]
    assert len(emulator.status()["subscriptions"]) == 1
    pool = client.session.get_adapter(emulator.url).poolmanager
    assert sum(p.num_connections for p in pool.pools._container.values()) == 1

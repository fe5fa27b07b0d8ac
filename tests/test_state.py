"""The token store: atomic, private, locked, and honest about tokens it cannot use."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kata_events.exits import ExitStatus, UserError
from kata_events.paths import default_state_path
from kata_events.state.errors import StateCorrupt, StateError, StateForeign, StateLocked, StateNotWritable
from kata_events.state.progress import Point
from kata_events.state.store import TokenStore

URL = "https://cn.example.local"
ID = "6f1c2a52-0d4e-4b8e-9c1a-3b2f7e9d0a11"
LONG_TOKEN = "tok-0123456789abcdefghijklmnopqrstuvwxyz"


def store(path, *, url=URL, external_system_id=ID, filter="Ioa.Severity == 'High'"):
    return TokenStore(path, url=url, external_system_id=external_system_id, filter=filter)


def run_python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


# -- files, modes, round trip ---------------------------------------------------------------------


def test_commit_writes_the_json_state_file_with_mode_0600(tmp_path):
    path = tmp_path / "s.token"
    with store(path) as s:
        s.commit_point(Point(LONG_TOKEN))
        assert s.committed == LONG_TOKEN
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text("utf-8"))
    assert doc["version"] == 1
    assert doc["token"] == LONG_TOKEN
    assert doc["url"] == URL
    assert doc["external_system_id"] == ID
    assert doc["filter"] == "Ioa.Severity == 'High'"
    dt.datetime.strptime(doc["saved_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert store(path).load() == (LONG_TOKEN, None)


def test_missing_directories_are_created_with_mode_0700_whatever_the_umask(tmp_path):
    path = tmp_path / "a" / "b" / "s.token"
    old = os.umask(0)
    try:
        with store(path) as s:
            s.commit_point(Point("t1"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_missing_file_loads_as_no_token_and_no_reason(tmp_path):
    assert store(tmp_path / "none.token").load() == (None, None)


def test_non_ascii_filters_round_trip(tmp_path):
    path = tmp_path / "s.token"
    flt = "UserName == 'Иванов'"
    with store(path, filter=flt) as s:
        s.commit_point(Point("t1"))
    assert "Иванов" in path.read_text("utf-8")
    assert store(path, filter=flt).load() == ("t1", None)


def test_commit_before_open_is_a_programming_error(tmp_path):
    with pytest.raises(RuntimeError):
        store(tmp_path / "s.token").commit_point(Point("t1"))


def test_clear_forgets_the_token_but_keeps_the_subscription_fields(tmp_path):
    path = tmp_path / "s.token"
    with store(path) as s:
        s.commit_point(Point("t1"))
        s.clear()
        assert s.committed is None
    doc = json.loads(path.read_text("utf-8"))
    assert doc["token"] is None
    assert (doc["url"], doc["external_system_id"]) == (URL, ID)
    assert store(path).load() == (None, None)


# -- atomic replace -------------------------------------------------------------------------------


def test_a_reader_polling_during_thousands_of_commits_sees_only_complete_json(tmp_path):
    path = tmp_path / "s.token"
    # The reader is another process, as a human or a `check` would be, and does not compete for
    # this interpreter's lock.
    reader = run_python(
        f"""
        import json, os, select, sys
        reads, bad = 0, []
        print("ready", flush=True)
        while not select.select([sys.stdin], [], [], 0)[0]:
            try:
                with open({str(path)!r}, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                continue
            try:
                assert json.loads(text)["token"].startswith("token-")
            except Exception:
                bad.append(text)
            reads += 1
        print(reads, json.dumps(bad[:3]), flush=True)
        """
    )
    try:
        assert reader.stdout.readline().strip() == "ready"
        with store(path) as s:
            s.commit_point(Point("token-first"))
            for i in range(1500):
                s.commit_point(Point(f"token-{i}-" + "x" * (i % 300)))
        out, err = reader.communicate("stop\n", timeout=30)
    finally:
        reader.kill()
    reads, bad = out.split(" ", 1)
    assert json.loads(bad) == [], err
    assert int(reads) > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.token", "s.token.lock"]


def test_kill_9_during_a_commit_loop_leaves_a_parseable_file_and_frees_the_lock(tmp_path):
    path = tmp_path / "s.token"
    child = run_python(
        f"""
        import sys
        from kata_events.state.progress import Point
        from kata_events.state.store import TokenStore
        s = TokenStore({str(path)!r}, url={URL!r}, external_system_id={ID!r})
        s.open()
        i = 0
        while True:
            s.commit_point(Point("token-%d-" % i + "y" * (i % 500)))
            if i == 50:
                print("going", flush=True)
            i += 1
        """
    )
    try:
        assert child.stdout.readline().strip() == "going"
        time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
        child.stdin.close()
        child.stderr.close()
    doc = json.loads(path.read_text("utf-8"))
    assert doc["token"].startswith("token-")
    number = int(doc["token"].split("-")[1])
    assert number >= 50
    with store(path, filter="") as s:
        assert s.load() == (doc["token"], None)
        s.commit_point(Point("token-after"))
    # A temp file the killed process left behind is swept by the next owner of the lock.
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_commit_removes_its_temp_file_and_says_not_writable(tmp_path):
    path = tmp_path / "s.token"
    with store(path) as s:
        path.mkdir()  # os.replace onto a directory fails
        with pytest.raises(StateNotWritable) as err:
            s.commit_point(Point("t1"))
    assert err.value.exit_code == 73
    assert str(path) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.token", "s.token.lock"]


def test_stale_temp_files_are_swept_when_the_lock_is_taken(tmp_path):
    path = tmp_path / "s.token"
    stale = tmp_path / ".s.token.deadbeef.tmp"
    stale.write_text("{")
    other = tmp_path / ".other.token.deadbeef.tmp"
    other.write_text("{")
    with store(path):
        pass
    assert not stale.exists()
    assert other.exists()


# -- the lock -------------------------------------------------------------------------------------

_HOLD = """
    import sys
    from kata_events.state.store import TokenStore, StateLocked
    s = TokenStore({path!r}, url="u", external_system_id={id!r}, filter="")
    try:
        s.open()
    except StateLocked as exc:
        print("locked", exc.holder_pid, exc, flush=True)
        sys.exit(exc.exit_code)
    print("holding", flush=True)
    sys.stdin.readline()
    s.close()
    print("closed", flush=True)
    sys.stdin.readline()
"""


def test_a_second_process_gets_state_locked_naming_our_pid(tmp_path):
    path = tmp_path / "s.token"
    with store(path) as s:
        assert s.files.lock.read_text().strip() == str(os.getpid())
        child = run_python(_HOLD.format(path=str(path), id=ID))
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 75
        assert out.startswith(f"locked {os.getpid()} ")
        assert str(path) in out
        assert f"process {os.getpid()}" in out


def test_a_lock_held_by_another_process_names_it_and_is_released_on_close(tmp_path):
    path = tmp_path / "s.token"
    child = run_python(_HOLD.format(path=str(path), id=ID))
    try:
        assert child.stdout.readline().strip() == "holding"
        with pytest.raises(StateLocked) as err:
            store(path).open()
        assert err.value.exit_code == 75
        assert err.value.holder_pid == child.pid
        assert f"process {child.pid}" in str(err.value)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "closed"
        with store(path) as s:
            s.commit_point(Point("t1"))
    finally:
        child.kill()
        child.communicate(timeout=10)


def test_a_lock_held_by_a_killed_process_is_free(tmp_path):
    path = tmp_path / "s.token"
    child = run_python(_HOLD.format(path=str(path), id=ID))
    try:
        assert child.stdout.readline().strip() == "holding"
        with pytest.raises(StateLocked):
            store(path).open()
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=10)
    with store(path) as s:
        assert s.files.lock.read_text().strip() == str(os.getpid())


def test_a_second_store_in_the_same_process_is_locked_out_too(tmp_path):
    path = tmp_path / "s.token"
    with store(path):
        with pytest.raises(StateLocked) as err:
            store(path).open()
        assert err.value.holder_pid == os.getpid()
    with store(path):
        pass


# -- not writable ---------------------------------------------------------------------------------


def test_a_directory_that_is_a_regular_file_is_not_writable(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    path = afile / "x.token"
    with pytest.raises(StateNotWritable) as err:
        store(path).open()
    message = str(err.value)
    assert isinstance(err.value, UserError)  # so the command line reports it like any user error
    assert err.value.exit_code == ExitStatus.CANT_CREATE == 73
    assert str(path) in message
    assert "directory" in message
    assert "--state-file" in message


def test_a_missing_parent_under_a_regular_file_deep_down_is_not_writable(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(StateNotWritable, match=r"afile is a file, not a directory"):
        store(afile / "deeper" / "x.token").open()


def test_a_directory_the_kernel_refuses_files_in_is_not_writable():
    # Works as root too: /proc/self exists but no file can be created in it.
    with pytest.raises(StateNotWritable) as err:
        store("/proc/self/kata-events.token").open()
    assert "/proc/self/kata-events.token" in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_a_read_only_directory_is_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        with pytest.raises(StateNotWritable, match="Permission denied"):
            store(ro / "x.token").open()
    finally:
        ro.chmod(0o700)


def test_a_state_path_that_is_a_directory_is_not_writable(tmp_path):
    (tmp_path / "s.token").mkdir()
    with pytest.raises(StateNotWritable, match="is a directory"):
        store(tmp_path / "s.token").open()


# -- load(): importing, binding, corruption -------------------------------------------------------


@pytest.mark.parametrize("content", ["tok-seed-123\n", "tok-seed-123", "  tok-seed-123\r\n"])
def test_the_original_scripts_plain_token_file_is_imported(tmp_path, content):
    path = tmp_path / "continuation_token.txt"
    path.write_text(content)
    with store(path) as s:
        token, reason = s.load()
        assert token == "tok-seed-123"
        assert "imported a plain token file" in reason
        s.commit_point(Point("tok-next"))
    assert json.loads(path.read_text())["token"] == "tok-next"


def test_a_plain_file_with_several_words_is_not_taken_for_a_token(tmp_path):
    path = tmp_path / "continuation_token.txt"
    path.write_text("hello world\n")
    with pytest.raises(StateCorrupt) as err:
        store(path).load()
    assert err.value.exit_code == 78


def test_an_empty_file_left_by_the_original_script_starts_over_with_a_reason(tmp_path):
    path = tmp_path / "continuation_token.txt"
    path.write_text("")
    token, reason = store(path).load()
    assert token is None
    assert "empty" in reason


def _commit(path, **kwargs):
    with store(path, **kwargs) as s:
        s.commit_point(Point(LONG_TOKEN))


def test_a_changed_filter_drops_the_token_with_a_reason(tmp_path):
    path = tmp_path / "s.token"
    _commit(path, filter="X")
    token, reason = store(path, filter="Y").load()
    assert token is None
    assert "the filter changed from 'X' to 'Y': starting a new subscription" in reason
    assert LONG_TOKEN not in reason
    assert LONG_TOKEN[:8] in reason


def test_a_state_file_of_another_external_system_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "s.token"
    _commit(path)
    before = path.read_bytes()
    other = store(path, external_system_id="other-id")
    with pytest.raises(StateForeign) as caught:
        other.check_owner()
    with pytest.raises(StateForeign):
        other.load()
    assert caught.value.exit_code == ExitStatus.CONFIG
    message = str(caught.value)
    assert ID in message and "other-id" in message
    assert "state reset" in message and "--state-file" in message
    assert LONG_TOKEN not in message
    assert path.read_bytes() == before


def test_a_changed_url_keeps_the_token_and_says_so(tmp_path):
    path = tmp_path / "s.token"
    _commit(path, url="https://cn1.example.local")
    token, reason = store(path, url="https://cn2.example.local").load()
    assert token == LONG_TOKEN
    assert "URL changed" in reason and "keeping the token" in reason
    assert LONG_TOKEN not in reason


def test_a_token_saved_more_than_two_hours_ago_is_kept_with_a_warning(tmp_path):
    path = tmp_path / "s.token"
    _commit(path)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=3)
    token, reason = store(path).load(now=later)
    assert token == LONG_TOKEN
    assert "two hours" in reason


@pytest.mark.parametrize(
    "content, why",
    [
        ('{"version": 1, "token": "abc"', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"version": 2, "token": "abc"}', "version 2"),
        ('{"version": 1, "token": 5}', "'token'"),
        ('{"version": 1, "token": "abc", "filter": null}', "'filter'"),
        (b'{"version": 1, "token": "\xff"}', "not valid JSON"),
    ],
)
def test_a_corrupt_state_file_is_a_configuration_error_not_a_silent_restart(tmp_path, content, why):
    path = tmp_path / "s.token"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(StateError) as err:
        store(path).load()
    assert err.value.exit_code == 78
    message = str(err.value)
    assert str(path) in message
    assert why in message
    assert "move it away" in message


# -- default_state_path ---------------------------------------------------------------------------


def test_default_state_path_prefers_systemds_state_directory():
    env = {"STATE_DIRECTORY": "/var/lib/kata-events:/var/lib/other", "XDG_STATE_HOME": "/x", "HOME": "/h"}
    assert default_state_path(ID, env) == Path(f"/var/lib/kata-events/{ID}.token")


def test_default_state_path_uses_xdg_state_home_next():
    env = {"XDG_STATE_HOME": "/home/u/.state", "HOME": "/home/u"}
    assert default_state_path(ID, env) == Path(f"/home/u/.state/kata-events/{ID}.token")


def test_default_state_path_falls_back_to_home_and_ignores_a_relative_xdg_state_home():
    expected = Path(f"/home/u/.local/state/kata-events/{ID}.token")
    assert default_state_path(ID, {"HOME": "/home/u"}) == expected
    assert default_state_path(ID, {"HOME": "/home/u", "XDG_STATE_HOME": "rel/dir"}) == expected


def test_default_state_path_keeps_an_odd_id_inside_the_directory():
    path = default_state_path("../../etc/passwd", {"STATE_DIRECTORY": "/var/lib/k"})
    assert path.parent == Path("/var/lib/k")

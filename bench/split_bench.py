"""Throughput of the Events API body splitter against ``json.loads`` on the same page.

Builds in memory a page like the biggest the Central Node serves (72,000 events of about 2 KB: ~130 MB
of JSON with Cyrillic text, escaped quotes and backslashes, registry paths with ``{GUID}`` and a
nested ``Ioa`` object), feeds it to ``PageSplitter`` in 256 KB chunks as a TLS socket would hand it
over, and prints MB/s and events/s, then the time ``json.loads`` takes on the same body as a baseline.

Run: ``python bench/split_bench.py [--events N] [--chunk BYTES] [--repeat R]``. Not a test: it only
measures (it does check that the splitter returned every event).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugin"))

from kata_events.source.stream import PageSplitter  # noqa: E402

EVENT_TYPES = [
    "process",
    "process_terminate",
    "module",
    "connection",
    "applock",
    "blockdocument",
    "filechange",
    "windowsevent",
    "registry",
    "portlisten",
    "driver",
    "threatdetect",
    "amsiscan",
]
USERS = ["CORP\\Иванов.ИИ", "CORP\\Петрова.АС", "CORP\\svc_backup", "NT AUTHORITY\\SYSTEM", "CORP\\Смирнов"]
TECHNIQUES = ["T1059", "T1059.001", "T1055", "T1003.001", "T1547.001", "T1021.002", "T1218.011"]
TACTICS = ["TA0002", "TA0004", "TA0005", "TA0006", "TA0008"]


def make_event(rng: random.Random, i: int) -> dict:
    """One plausible event of roughly 2 KB once encoded."""
    user = rng.choice(USERS)
    guid = "{" + str(uuid.UUID(int=rng.getrandbits(128))).upper() + "}"
    folder = rng.choice(["Документы", "Загрузки", "Рабочий стол", "AppData\\Local\\Temp"])
    exe = f"C:\\Users\\{user.split(chr(92))[-1]}\\{folder}\\отчёт_{i % 977}.exe"
    return {
        "EventType": rng.choice(EVENT_TYPES),
        "Timestamp": 1_700_000_000_000_000 + i * 1_000,
        "HostName": f"WS-{rng.randrange(10_000):04d}.corp.example.local",
        "HostIp": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
        "UserName": user,
        "OsFamily": "Windows",
        "OsVersion": "10.0.19045",
        "FileName": exe,
        "Md5": f"{rng.getrandbits(128):032x}",
        "Sha256": f"{rng.getrandbits(256):064x}",
        "CommandLine": f'"{exe}" /c "powershell -enc {rng.getrandbits(160):040x}"'
        ' --path="C:\\Program Files\\App"',
        "RegistryKey": f"HKLM\\SOFTWARE\\Classes\\CLSID\\{guid}\\InprocServer32",
        "ParentProcess": {
            "FileName": "C:\\Windows\\System32\\cmd.exe",
            "Pid": rng.randrange(100, 65_000),
            "CommandLine": 'cmd.exe /c "start \\"\\" notepad.exe"',
        },
        "Description": "Процесс запущен из временного каталога пользователя; запрошен доступ к [LSASS] {"
        + guid
        + '}, ответ: "отказано"',
        "Ioa": {
            "Severity": rng.choice(["Low", "Medium", "High"]),
            "Confidence": rng.choice(["Low", "Medium", "High"]),
            "Rules": [
                {
                    "Id": f"{rng.getrandbits(64):016x}",
                    "Name": "Подозрительный запуск PowerShell с закодированной командой",
                    "Techniques": rng.sample(TECHNIQUES, 2),
                    "Tactics": rng.sample(TACTICS, 1),
                }
                for _ in range(2)
            ],
        },
        "Tags": ["edr", "ioa", "ёжик"],
        "Padding": "Журнал событий: " + "данные " * rng.randrange(5, 35),
    }


def build_body(n_events: int, seed: int = 1) -> bytes:
    """A page ``{"events":[...],"continuationToken":"..."}`` encoded as the server would (compact)."""
    rng = random.Random(seed)
    # Encoding 72,000 distinct events takes seconds; a few thousand distinct ones, cycled, are as hard.
    distinct = [
        json.dumps(make_event(rng, i), ensure_ascii=False, separators=(",", ":")).encode()
        for i in range(min(n_events, 4_000))
    ]
    events = b",".join(distinct[i % len(distinct)] for i in range(n_events))
    return b'{"events":[' + events + b'],"continuationToken":"' + uuid.uuid4().hex.encode() + b'"}'


def split_all(body: bytes, chunk: int) -> tuple[int, int]:
    """Feed ``body`` in ``chunk``-byte pieces; return (events, total event bytes)."""
    splitter = PageSplitter()
    count = size = 0
    for start in range(0, len(body), chunk):
        for event in splitter.feed(body[start : start + chunk]):
            count += 1
            size += len(event)
    splitter.close()
    return count, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=72_000)
    parser.add_argument("--chunk", type=int, default=256 * 1024)
    parser.add_argument("--repeat", type=int, default=3, help="best of R runs")
    args = parser.parse_args()

    body = build_body(args.events)
    mb = len(body) / 1e6
    print(
        f"python {sys.version.split()[0]}; body {mb:.1f} MB, {args.events} events "
        f"(avg {len(body) / args.events:.0f} B), chunks of {args.chunk} B"
    )

    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        count, _size = split_all(body, args.chunk)
        best = min(best, time.perf_counter() - t0)
        if count != args.events:
            print(f"ERROR: splitter returned {count} events, expected {args.events}")
            return 1
    print(f"PageSplitter: {best:.3f} s  {mb / best:7.1f} MB/s  {args.events / best:10.0f} events/s")

    t0 = time.perf_counter()
    json.loads(body)
    loads = time.perf_counter() - t0
    print(f"json.loads:   {loads:.3f} s  {mb / loads:7.1f} MB/s  {args.events / loads:10.0f} events/s")
    print(f"splitter is {loads / best:.1f}x faster than json.loads")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Realistic, deterministic, pre-encoded Central Node events for the emulator.

An event is fully determined by ``(seed, seq, timestamp)``: ``seq`` picks one of a few hundred
templates (built once from ``seed``), and the served bytes are the template's pre-encoded tail with
``EmulatorSeq`` (always the first key) and ``Timestamp`` (epoch microseconds) spliced in front. That
keeps a 72,000-event page a cheap join of byte strings.

The templates exercise what a client's parser and splitter must survive: raw UTF-8 (Cyrillic user
names and paths, never ``\\u``-escaped), Windows paths with backslashes (``\\\\`` in JSON), command
lines with quotes, tabs and newlines (``\\"``, ``\\t``, ``\\n``), braces and brackets inside strings
(registry ``{GUID}`` keys, PowerShell script blocks), and a nested ``Ioa`` object on some events.

Pure: no clock, no I/O. The caller supplies timestamps.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any, Dict, List, Tuple

__all__ = ["EVENT_TYPES", "EventFactory"]

EVENT_TYPES = (
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
    "threatprocessingresult",
    "amsiscan",
    "process_interpretated_file_run",
    "process_console_interactive_input",
)

_HOSTS = [
    ("WS-ACC-017", "10.20.3.17", "Windows", "10.0.19045"),
    ("WS-HR-004", "10.20.5.4", "Windows", "10.0.22631"),
    ("SRV-DC01", "10.0.0.10", "Windows", "10.0.20348"),
    ("SRV-FILE02", "10.0.0.22", "Windows", "10.0.17763"),
    ("BUH-ПК-05", "10.20.7.5", "Windows", "6.1.7601"),
    ("web-prod-3", "192.168.10.50", "Linux", "5.15.0-105-generic"),
    ("db-replica", "192.168.10.61", "Linux", "4.18.0-513.el8.x86_64"),
    ("mac-design-2", "10.20.9.2", "macOS", "14.4.1"),
]

_USERS = [
    "CORP\\иванов.п",
    "CORP\\Смирнова.А",
    "CORP\\j.doe",
    "CORP\\müller.jürgen",
    "CORP\\svc_backup",
    "NT AUTHORITY\\SYSTEM",
    "CORP\\李伟",
    "root",
    "www-data",
]

_WIN_FILES = [
    "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
    "C:\\Windows\\System32\\cmd.exe",
    "C:\\Windows\\System32\\rundll32.exe",
    "C:\\Users\\{user}\\AppData\\Local\\Temp\\обновление.exe",
    "C:\\Users\\{user}\\Рабочий стол\\Отчёт за квартал.docm",
    "C:\\Program Files\\Microsoft Office\\root\\Office16\\WINWORD.EXE",
    "C:\\ProgramData\\{{3F2504E0-4F89-11D3-9A0C-0305E82C3301}}\\svc.dll",
]

_LINUX_FILES = ["/usr/bin/bash", "/usr/bin/python3", "/tmp/.x/агент", "/usr/sbin/sshd", "/usr/bin/curl"]

_COMMAND_LINES = [
    'powershell.exe -NoProfile -EncodedCommand "SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIAA="',
    'powershell.exe -c "& {Get-Process | ? {$_.CPU -gt 10} | % {$_.Name}}"',
    'cmd.exe /c "echo [ok] > C:\\Temp\\out.txt"\t&& type "C:\\Temp\\out.txt"',
    'rundll32.exe "C:\\Users\\Public\\{9A7B-11}.dll",#1',
    'reg.exe add "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run" /v Updater /d "C:\\x.exe"',
    "bash -c 'for i in 1 2 3; do echo \"$i\"; done'\nexit 0",
    "python3 -c \"import json; print(json.dumps({'a': [1, 2, {}]}))\"",
    'wscript.exe "C:\\Users\\иванов.п\\Downloads\\счёт_№42.js"',
]

_REGISTRY_KEYS = [
    "HKLM\\SOFTWARE\\Classes\\CLSID\\{{{guid}}}\\InprocServer32",
    "HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run",
    "HKLM\\SYSTEM\\CurrentControlSet\\Services\\{{{guid}}}",
]

_RULES = [
    ("PowerShell encoded command", ["T1059", "T1059.001", "T1027"], ["Execution", "Defense Evasion"]),
    ("Suspicious rundll32 launch", ["T1218", "T1218.011"], ["Defense Evasion"]),
    ("Run key persistence", ["T1547", "T1547.001"], ["Persistence", "Privilege Escalation"]),
    ("Office spawns script host", ["T1566", "T1566.001", "T1059.005"], ["Initial Access", "Execution"]),
    ("Credential dumping via LSASS access", ["T1003", "T1003.001"], ["Credential Access"]),
    ("Обнаружен подозрительный скрипт", ["T1059"], ["Execution"]),
]

_SEVERITIES = ["Low", "Medium", "High", "Critical"]
_CONFIDENCES = ["Low", "Medium", "High"]

_FILLER_WORDS = [
    "ScriptBlock",
    "{",
    "$x",
    "=",
    "[Convert]::FromBase64String($e);",
    "}",
    "Invoke-Expression",
    "-Command",
    '"$s"',
    "Get-WmiObject",
    "Win32_Process",
    "|",
    "Where-Object",
    "{$_.Name",
    "-eq",
    "'svchost.exe'}",
    ";",
    "Журнал",
    "событий:",
    "процесс",
    "запущен",
    "из",
    "временного",
    "каталога;",
    "path=C:\\Windows\\Temp\\{7C9E6679-7425-40DE-944B-E07FC1F90AE7}\\a.ps1",
    "[x86]",
]

_HEAD = b'{"EmulatorSeq":%d,"Timestamp":%d,'


class EventFactory:
    """Builds ``templates`` event templates from ``seed`` and serves events by sequence number.

    ``event_bytes`` is the approximate size of one encoded event; each template is padded with a
    ``Details`` string to reach it.
    """

    def __init__(self, seed: int = 1, event_bytes: int = 1500, templates: int = 256) -> None:
        if templates < 1:
            raise ValueError("templates must be at least 1")
        self.seed = seed
        self.event_bytes = event_bytes
        self.templates: List[Dict[str, Any]] = []
        self.tails: List[bytes] = []
        rng = random.Random(seed)
        for index in range(templates):
            template, tail = self._pad_and_encode(self._make_template(rng, index), rng)
            self.templates.append(template)
            self.tails.append(tail)
        self._mix = (seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFF
        self.count = templates

    def template_index(self, seq: int) -> int:
        """Which template event ``seq`` uses (a fixed scramble, so neighbours differ)."""
        return (((seq * 2654435761) & 0xFFFFFFFF) ^ self._mix) % self.count

    def encode(self, seq: int, timestamp_us: int, template: int) -> bytes:
        """The exact bytes of event ``seq`` appearing at ``timestamp_us`` using ``template``."""
        return _HEAD % (seq, timestamp_us) + self.tails[template]

    def event_bytes_for(self, seq: int, timestamp_us: int) -> bytes:
        return self.encode(seq, timestamp_us, self.template_index(seq))

    def event_dict(self, seq: int, timestamp_us: int, template: int) -> Dict[str, Any]:
        """The event as a dict: equal to ``json.loads`` of :meth:`encode`."""
        event: Dict[str, Any] = {"EmulatorSeq": seq, "Timestamp": timestamp_us}
        event.update(self.templates[template])
        return event

    def encoded_length(self, seq: int, timestamp_us: int, template: int) -> int:
        return len(_HEAD) - 4 + len(str(seq)) + len(str(timestamp_us)) + len(self.tails[template])

    # -- building ----------------------------------------------------------------------------------

    def _make_template(self, rng: random.Random, index: int) -> Dict[str, Any]:
        event_type = EVENT_TYPES[index % len(EVENT_TYPES)]
        host, ip, os_family, os_version = rng.choice(_HOSTS)
        user = rng.choice(_USERS if os_family == "Windows" else ["root", "www-data", "иванов", "deploy"])
        short_user = user.split("\\")[-1]
        if os_family == "Windows":
            file_name = rng.choice(_WIN_FILES).format(user=short_user)
        else:
            file_name = rng.choice(_LINUX_FILES)
        guid = str(uuid.UUID(int=rng.getrandbits(128))).upper()
        event: Dict[str, Any] = {
            "EventType": event_type,
            "HostName": host,
            "HostIp": ip,
            "UserName": user,
            "OsFamily": os_family,
            "OsVersion": os_version,
            "FileName": file_name,
            "ProcessId": rng.randint(4, 65000),
            "ParentProcessId": rng.randint(4, 65000),
            "CommandLine": rng.choice(_COMMAND_LINES),
            "Md5": f"{rng.getrandbits(128):032x}",
            "Sha256": f"{rng.getrandbits(256):064x}",
        }
        if event_type in ("connection", "portlisten"):
            event["RemoteIp"] = rng.choice(["192.168.10.50", "203.0.113.7", "198.51.100.23", "10.0.0.10"])
            event["RemotePort"] = rng.choice([443, 445, 3389, 4444, 8080])
            event["LocalPort"] = rng.randint(1024, 65535)
        if event_type == "registry":
            event["RegistryKey"] = rng.choice(_REGISTRY_KEYS).format(guid=guid)
            event["RegistryValue"] = "Updater"
        if event_type == "windowsevent":
            event["WindowsEventId"] = rng.choice([4624, 4625, 4688, 7045])
            event["Channel"] = "Security"
        if event_type in ("threatdetect", "threatprocessingresult", "amsiscan"):
            event["ThreatName"] = rng.choice(["HEUR:Trojan.Win32.Generic", "PDM:Exploit.Win32.Generic"])
        if index % 3 == 0:
            rules = []
            for _ in range(rng.randint(1, 3)):
                name, techniques, tactics = rng.choice(_RULES)
                rules.append(
                    {
                        "Id": str(uuid.UUID(int=rng.getrandbits(128))),
                        "Name": name,
                        "Techniques": list(techniques),
                        "Tactics": list(tactics),
                    }
                )
            event["Ioa"] = {
                "Severity": rng.choice(_SEVERITIES),
                "Confidence": rng.choice(_CONFIDENCES),
                "Rules": rules,
            }
        return event

    def _pad_and_encode(self, template: Dict[str, Any], rng: random.Random) -> Tuple[Dict[str, Any], bytes]:
        body = _dumps(template)
        # ``_HEAD`` with a typical seq and timestamp is ~50 bytes; pad the rest with Details.
        overhead = 50 + len(b',"Details":""')
        missing = self.event_bytes - overhead - len(body)
        if missing > 0:
            template = dict(template)
            template["Details"] = _filler(rng, missing)
            body = _dumps(template)
        # Strip the opening brace: the head supplies it along with the first two keys.
        return template, body[1:]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _filler(rng: random.Random, size: int) -> str:
    """A string whose JSON encoding is about ``size`` bytes."""
    words: List[str] = []
    total = 0
    while total < size:
        word = rng.choice(_FILLER_WORDS)
        encoded = _FILLER_LENGTHS[word]
        if total + encoded > size and words:
            break
        words.append(word)
        total += encoded
    return " ".join(words)


#: Each filler word's length inside a JSON string, with the space that joins it: a 100 KB event
#: takes thousands of words, and encoding each one again made a large emulator slow to start.
_FILLER_LENGTHS = {word: len(_dumps(word)) - 2 + 1 for word in _FILLER_WORDS}

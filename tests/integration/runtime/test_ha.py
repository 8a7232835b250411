"""High availability on PostgreSQL (docs/daemon.md "High availability"):
three real daemons share one database; one holds the advisory lock and
works, the others stand by. The leader is SIGKILLed, a standby takes over
within seconds, and across the whole test

* every alert was mailed exactly once (no duplicate despite the failover),
  and exactly the alerts the ladder asks for;
* every token version in Vault was written by one daemon at a time: the
  versions each daemon logged are unique and increasing, the dead
  leader's writes all precede the new leader's, Vault holds no version
  nobody logged, and no check-and-set conflict ever happened;
* the standby that did not win never wrote a token or sent a mail;
* no log holds a traceback, a token, an assertion or a private key.

The leader is killed at a quiet moment (no token refresh in flight, the
alert marked sent): mail delivery is at-least-once by design (a crash
between sending and recording repeats the message under the same
Message-ID, see ``keyd.actions.deliver``), so "exactly once" across a
failover is the claim for work that was finished before the crash.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text

from keyd.checks.ladder import due_rungs
from keyd.store.migrate import upgrade
from keyd.timeutil import parse_duration
from tests.support.daemon import free_port, start_keyd, stop, wait_until, write_config
from tests.support.db import postgres_database
from tests.support.issuer import IssuerServer
from tests.support.keys import MadeKey, make_key_file
from tests.support.openbao import OpenBao, openbao  # noqa: F401
from tests.support.smtp import SmtpServer, smtp_server  # noqa: F401

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.openbao,
    pytest.mark.issuer,
    pytest.mark.smtp,
]

THRESHOLDS = ["30d", "14d", "7d", "3d", "1d"]
TOKEN_LIFETIME = 6  # seconds: a refresh every ~4 s (2/3 TTL minus jitter)
WAIT = 30.0  # per wait: the machine is shared and slow
NAMES = ("a", "b", "c")


class DrainedNotifications:
    """A notify socket read continuously by a thread. A Unix datagram
    socket queues only ``net.unix.max_dgram_qlen`` (10) messages; an
    unread one would block the daemon's ``sd_notify`` (a STATUS= after
    every scan) and with it the control tick that takes leadership."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.seen: list[str] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._done.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.seen.append(message)

    def messages(self) -> list[str]:
        with self._lock:
            return list(self.seen)

    def saw(self, prefix: str, start: int = 0) -> str | None:
        """The first message from index ``start`` on containing a line
        starting with ``prefix``."""
        for message in self.messages()[start:]:
            if any(line.startswith(prefix) for line in message.split("\n")):
                return message
        return None

    def wait_for(self, prefix: str, timeout: float = WAIT) -> str:
        found: list[str] = []
        wait_until(
            lambda: bool(found.append(self.saw(prefix) or "") or found[-1]),
            timeout=timeout,
            what=f"{prefix!r} on {self.path.name} ({self.messages()})",
        )
        return found[-1]

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self.sock.close()


@dataclass
class Daemon:
    name: str
    port: int
    log: Path
    notes: DrainedNotifications
    proc: subprocess.Popen[bytes] | None = None

    def events(self) -> list[dict[str, Any]]:
        """The daemon's JSON log events (non-JSON lines are kept as ``raw``)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"ts": "", "msg": line, "raw": True})
        return out

    def token_writes(self) -> list[Write]:
        return [
            Write(self.name, e["ts"], *parse_write(e["msg"]))
            for e in self.events()
            if e.get("logger") == "keyd.actions.tokensink" and " written to " in e["msg"]
        ]

    def sent_mails(self) -> list[str]:
        return [
            e["msg"].split()[3]
            for e in self.events()
            if e.get("logger") == "keyd.actions.deliver" and e["msg"].startswith("sent email alert ")
        ]


@dataclass(frozen=True)
class Write:
    daemon: str
    ts: str
    key_id: str
    ref: str
    version: int


def parse_write(msg: str) -> tuple[str, str, int]:
    """``token for K written to M/P version N (...)`` → (K, M/P, N)."""
    words = msg.split()
    assert words[:2] == ["token", "for"] and words[3:5] == ["written", "to"], msg
    assert words[6] == "version", msg
    return words[2], words[5], int(words[7])


def daemon_config(
    tmp_path: Path,
    name: str,
    port: int,
    *,
    db_url: str,
    keys: Path,
    issuer: IssuerServer,
    bao: OpenBao,
    smtp: SmtpServer,
    prefix: str,
) -> Path:
    return write_config(
        tmp_path / f"{name}.toml",
        db_url=db_url,
        keys=keys,
        issuer_url=issuer.url,
        vault=(bao.addr, bao.root_token),
        tokens_path=f"{prefix}/{{principal}}",
        smtp=(smtp.host, smtp.port),
        http_port=port,
        fast_ticks=True,
        extra=f'[alerts]\nthresholds = {json.dumps(THRESHOLDS)}\n[log]\nlevel = "INFO"\nformat = "json"\n',
    )


def role(http: httpx.Client, daemon: Daemon) -> object:
    """``/readyz``'s role; a standby is ready too (200), it just does not work."""
    response = http.get(f"http://127.0.0.1:{daemon.port}/readyz")
    assert response.status_code == 200, response.text
    return response.json().get("role")


def quiet(engine: Engine, bao: OpenBao, prefix: str, paths: int) -> bool:
    """No token refresh can be in flight for the next second and every
    version keyd wrote is recorded: a sink is only picked up once its
    ``next_refresh_at`` has passed, and a round records its outcomes at
    its end, so a future ``next_refresh_at`` on every sink means none is
    being minted or written, and Vault's version is the recorded one. The
    alert deliveries are all recorded as sent."""
    soon = datetime.now(UTC) + timedelta(seconds=1)
    with engine.connect() as conn:
        sinks = conn.execute(text("select path, vault_version, next_refresh_at, state from tokens")).all()
        open_mail = conn.execute(text("select count(*) from deliveries where state <> 'sent'")).scalar_one()
    if len(sinks) != paths or open_mail:
        return False
    for path, version, next_at, state in sinks:
        if state != "ok" or next_at is None or _aware(next_at) <= soon:
            return False
        if bao.kv_metadata(path)["current_version"] != version:
            return False
    return all(path.startswith(prefix + "/") for path, *_ in sinks)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def writes_by(daemons: list[Daemon], name: str, ref: str) -> int:
    return sum(1 for d in daemons if d.name == name for w in d.token_writes() if w.ref == ref)


def eventually(predicate: Callable[[], bool], what: str) -> None:
    wait_until(predicate, timeout=WAIT, what=what)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Daemon]]:
    """Three daemon slots (port, log, notify socket); every process still
    running at the end is killed, every socket closed."""
    daemons = [
        Daemon(name, free_port(), tmp_path / f"{name}.log", DrainedNotifications(tmp_path / f"{name}.sock"))
        for name in NAMES
    ]
    try:
        yield daemons
    finally:
        for daemon in daemons:
            if daemon.proc is not None:
                stop(daemon.proc)
            daemon.notes.close()


def test_three_daemons_one_leader_failover_without_duplicates(
    tmp_path: Path,
    cluster: list[Daemon],
    issuer: IssuerServer,
    openbao: OpenBao,  # noqa: F811
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    prefix = f"ha-{uuid.uuid4().hex[:8]}"
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    issuer.set_token_lifetime(TOKEN_LIFETIME)
    now = datetime.now(UTC)
    expiring = make_key_file(
        keys, user_id="svc-expiring", expires_at=now + timedelta(days=5), register_with=issuer
    )
    healthy = make_key_file(
        keys, user_id="svc-healthy", expires_at=now + timedelta(days=200), register_with=issuer
    )
    a = cluster[0]
    with postgres_database() as db_url:
        upgrade(db_url)
        engine = create_engine(db_url)
        try:
            for daemon in cluster:
                config = daemon_config(
                    tmp_path,
                    daemon.name,
                    daemon.port,
                    db_url=db_url,
                    keys=keys,
                    issuer=issuer,
                    bao=openbao,
                    smtp=smtp_server,
                    prefix=prefix,
                )
                daemon.proc = start_keyd(config, daemon.notes, daemon.log, watchdog_usec=0)
                ready = daemon.notes.wait_for("READY=1")
                expected = "STATUS=leader" if daemon is a else "STATUS=standby"
                assert expected in ready, ready
            made, winner = run_failover(cluster, engine, issuer, openbao, keys, prefix, [expiring, healthy])
            with engine.connect() as conn:
                alerts = conn.execute(
                    text(
                        "select k.key_id, a.kind, a.threshold, a.message_id from alerts a "
                        "left join keys k on k.id = a.key_pk"
                    )
                ).all()
        finally:
            for daemon in cluster:
                if daemon.proc is not None:
                    stop(daemon.proc)
            engine.dispose()
    check_alerts(cluster, smtp_server, alerts, made, winner)
    check_token_writes(cluster, openbao, prefix, winner)
    check_logs(cluster, issuer, openbao)


def run_failover(
    cluster: list[Daemon],
    engine: Engine,
    issuer: IssuerServer,
    bao: OpenBao,
    keys: Path,
    prefix: str,
    made: list[MadeKey],
) -> tuple[list[MadeKey], str]:
    """Start-up to SIGTERM; returns every key made (the one added after the
    failover too) and the name of the standby that took over."""
    a, b, c = cluster
    with httpx.Client(timeout=10) as http:
        assert [role(http, d) for d in cluster] == ["leader", "standby", "standby"]

        # the leader delivers the 7d alert and refreshes both tokens at least once
        eventually(lambda: len(a.sent_mails()) >= 1, "the first alert sent by a")
        refs = [f"secret/{prefix}/{k.principal}" for k in made]
        eventually(
            lambda: all(writes_by(cluster, "a", r) >= 2 for r in refs),
            "two token versions per path written by a",
        )

        # SIGKILL at a quiet moment: no refresh in flight, every mail recorded
        eventually(lambda: quiet(engine, bao, prefix, paths=2), "a quiet moment")
        assert a.proc is not None
        a.proc.kill()
        a.proc.wait(timeout=10)
        killed = time.monotonic()

        winner = None

        def someone_leads() -> bool:
            nonlocal winner
            leaders = [d for d in (b, c) if d.notes.saw("STATUS=leader")]
            winner = leaders[0] if len(leaders) == 1 else None
            assert len(leaders) <= 1, "two daemons took over"
            return winner is not None

        eventually(someone_leads, "a standby taking over")
        takeover = time.monotonic() - killed
        assert takeover < 10, f"takeover took {takeover:.1f}s"  # "within seconds"
        assert winner is not None
        loser = c if winner is b else b
        assert role(http, winner) == "leader" and role(http, loser) == "standby"

        # a key appears: the new leader scans it, alerts once, writes its token
        fresh = make_key_file(
            keys, user_id="svc-fresh", expires_at=datetime.now(UTC) + timedelta(days=2), register_with=issuer
        )
        made.append(fresh)
        refs.append(f"secret/{prefix}/{fresh.principal}")
        # (counted over both standbys: check_* say who did what)
        eventually(lambda: len(b.sent_mails()) + len(c.sent_mails()) >= 1, "the new key's alert")
        eventually(
            lambda: all(writes_by(cluster, "b", r) + writes_by(cluster, "c", r) >= 2 for r in refs),
            "two token versions per path written after the failover",
        )
        assert role(http, loser) == "standby"
        assert loser.notes.saw("STATUS=leader") is None

    for daemon in (b, c):
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
    for daemon in (b, c):
        assert daemon.proc is not None
        assert daemon.proc.wait(timeout=WAIT) == 0
    assert "role changed: standby -> leader" in winner.log.read_text()
    return made, winner.name


def check_alerts(
    cluster: list[Daemon], smtp: SmtpServer, alerts: list[Any], made: list[MadeKey], winner: str
) -> None:
    """Exactly the alerts the ladder asks for, each mailed exactly once."""
    thresholds = [parse_duration(t) for t in THRESHOLDS]
    at = datetime.now(UTC)
    expected = set()
    for key in made:
        assert key.expires_at is not None
        rung = due_rungs(key.expires_at, thresholds, at, set())
        if rung is not None:
            expected.add((key.key_id, rung.label))
    # 5 days left -> "7d"; 200 days -> nothing; 2 days (first seen after the failover) -> "3d"
    assert sorted(label for _, label in expected) == ["3d", "7d"]
    decided = {(key_id, threshold.split("@")[0]) for key_id, _, threshold, _ in alerts}
    assert decided == expected, alerts
    assert len(alerts) == len(expected), alerts

    ids = [str(r.message["Message-ID"]) for r in smtp.inbox()]
    assert sorted(ids) == sorted(row.message_id for row in alerts), ids  # each exactly once
    logged = [m for d in cluster for m in d.sent_mails()]
    assert sorted(logged) == sorted(ids), logged
    sent = {d.name: len(d.sent_mails()) for d in cluster}
    loser = ({"b", "c"} - {winner}).pop()
    # the 7d alert before the failover, the 3d alert after it, nothing from the loser
    assert sent == {"a": 1, winner: 1, loser: 0}, sent
    for row in alerts:
        subjects = [
            str(r.message["Subject"]) for r in smtp.inbox() if str(r.message["Message-ID"]) == row.message_id
        ]
        assert len(subjects) == 1 and row.key_id in subjects[0], subjects


def check_token_writes(cluster: list[Daemon], bao: OpenBao, prefix: str, new_leader: str) -> None:
    """One writer at a time, per path, over the whole test."""
    writes = [w for d in cluster for w in d.token_writes()]
    writers = {w.daemon for w in writes}
    assert writers == {"a", new_leader}, writers  # the loser never wrote
    assert {w.ref.split("/", 1)[1].rsplit("/", 1)[0] for w in writes} == {prefix}
    by_ref: dict[str, list[Write]] = {}
    for w in writes:
        by_ref.setdefault(w.ref, []).append(w)
    assert len(by_ref) == 3, sorted(by_ref)
    for ref, seq in by_ref.items():
        versions = [w.version for w in seq]
        assert len(versions) == len(set(versions)), f"{ref}: a version written twice: {seq}"
        in_time = sorted(seq, key=lambda w: (w.ts, w.version))
        assert [w.version for w in in_time] == sorted(versions), f"{ref}: out of order {seq}"
        order = [w.daemon for w in in_time]
        old = order.count("a")
        assert order == ["a"] * old + [new_leader] * (len(order) - old), f"{ref}: {order}"
        assert sorted(versions) == list(range(1, len(versions) + 1)), f"{ref}: gaps {versions}"
        path = ref.split("/", 1)[1]
        assert bao.kv_metadata(path)["current_version"] == len(versions), ref
        assert writes_by(cluster, new_leader, ref) >= 2, ref


def check_logs(cluster: list[Daemon], issuer: IssuerServer, bao: OpenBao) -> None:
    secrets = ["Traceback", "zat_", "eyJ", "PRIVATE KEY", bao.root_token, *issuer.issued_tokens]
    for daemon in cluster:
        logged = daemon.log.read_text(errors="replace")
        for needle in secrets:
            assert needle not in logged, f"{daemon.name}.log holds {needle[:8]}…"
        for event in daemon.events():
            msg = str(event.get("msg", "")).lower()
            assert "conflict" not in msg and "check-and-set" not in msg, event
            assert "a newer keyd token is in place" not in msg, event

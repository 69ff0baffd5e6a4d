"""The daemon's network endpoint against other web pages and other users: DNS rebinding
(a foreign Host or Origin on a daemon with no token), token files and KATAPOOL_TOKEN.

The rebinding attack, as the daemon sees it: a page on evil.example whose name now resolves
to 127.0.0.1 connects to ``ws://evil.example:PORT/``; its browser sends ``Host:
evil.example:PORT`` and ``Origin: http://evil.example:PORT``. The tests send exactly those
headers to a real daemon on loopback."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket  # websocket-client: what KaTrain's remote engine uses
from daemon_helpers import Started, running_daemon

from conftest import G170, Katapool
from katapool.client import Client, ConnectionLost, Position
from katapool.client.transport import WebSocketChannel, channel_for, resolve_token
from katapool.config.poolfile import Listen, is_loopback
from katapool.errors import KatapoolError
from katapool.server import control
from katapool.server.state import read_or_create_token, read_token_file
from katapool.server.web_endpoint import host_name

VERSION = json.dumps({"id": "v", "action": "query_version"})


# --- Host and Origin names, without a daemon ---------------------------------------------------

@pytest.mark.parametrize("header,loopback", [
    ("localhost:6364", True), ("LOCALHOST", True), ("localhost.:6364", True),
    ("127.0.0.1:6364", True), ("127.1.2.3", True), ("[::1]:6364", True), ("[::1]", True),
    ("evil.example:6364", False), ("127.0.0.1.evil.example:6364", False),
    ("localhost.evil.example", False), ("evil.example.localhost.", False),
    ("0.0.0.0:6364", False), ("[::]:6364", False), ("::1", False), ("", False),
    ("127.0.0.1:port", False), ("[::1]x", False),
])
def test_loopback_host_names(header: str, loopback: bool) -> None:
    name = host_name(header)
    assert (name is not None and is_loopback(name)) is loopback


@pytest.mark.parametrize("entry,kept", [
    ("https://my-gui.example", "https://my-gui.example"),
    ("HTTPS://My-GUI.example:443", "https://my-gui.example"),
    ("http://localhost:8080", "http://localhost:8080"),
    ("app://katrain", "app://katrain"),
])
def test_listen_origins_are_kept_as_browsers_send_them(entry: str, kept: str) -> None:
    assert Listen(origins=[entry]).origins == [kept]


@pytest.mark.parametrize("entry,says", [
    ("https://my-gui.example/", "no path or trailing slash"),
    ("https://my-gui.example/app?x=1", "browsers send https://my-gui.example"),
    ("my-gui.example", "not scheme://host"),
    ("null", "not scheme://host"),
])
def test_listen_origins_that_never_match_are_refused(entry: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Listen(origins=[entry])


def test_an_endpoint_open_to_the_network_without_a_token_is_named() -> None:
    warning = Listen(websocket="0.0.0.0:6364", require_token=False).exposure_warning()
    assert warning is not None and "port 6364" in warning and "require_token: false" in warning
    assert Listen(websocket="0.0.0.0:6364").exposure_warning() is None  # token by default
    assert Listen(websocket="127.0.0.1:6364", require_token=False).exposure_warning() is None
    assert Listen(websocket="[::1]:6364", require_token=False).exposure_warning() is None
    assert Listen().exposure_warning() is None


# --- a daemon with no token (loopback) --------------------------------------------------------

@pytest.fixture(scope="module")
def open_daemon(kp: Katapool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    root = tmp_path_factory.mktemp("open-daemon")
    with running_daemon(kp, root, "--members", "1", "--model", str(G170), "--listen", "unix:",
                        "--listen", "ws://127.0.0.1:0") as started:
        yield started


@pytest.mark.engine
def test_a_client_connects_again_after_the_daemon_restarts(kp: Katapool, tmp_path: Path) -> None:
    """A desktop GUI's client outlives a daemon restart: the call in the gap fails with a clear
    ConnectionLost, and the same client, reconnected, is answered by the new daemon."""
    args = ("--members", "1", "--model", str(G170), "--listen", "unix:")
    position = Position.from_moves(["Q16", "D4"])
    with running_daemon(kp, tmp_path, *args) as first:
        client = Client.connect(f"unix:{first.socket}")
        assert client.analyze(position, visits=2).best_move
    try:
        with pytest.raises(ConnectionLost):
            client.analyze(position, visits=2)
        with pytest.raises(ConnectionLost, match="no katapool daemon"):
            client.reconnect()  # nobody there yet: said, and the client still usable later
        with running_daemon(kp, tmp_path, *args) as second:  # the same state dir: same socket
            assert second.socket == first.socket
            client.reconnect()
            assert client.analyze(position, visits=2).best_move
            assert client.analyze(position, visits=2).best_move
    finally:
        client.close()


def _port(daemon: Started) -> int:
    return int(daemon.ws_url.rstrip("/").rsplit(":", 1)[1])


def _answers_version(ws: websocket.WebSocket) -> None:
    try:
        ws.send(VERSION)
        assert json.loads(ws.recv())["id"] == "v"
    finally:
        ws.close()


@pytest.mark.engine
def test_rebinding_is_refused(open_daemon: Started) -> None:
    url, port = open_daemon.ws_url, _port(open_daemon)
    assert not (open_daemon.state / "token").exists()  # loopback: no token
    foreign = [(f"evil.example:{port}", f"http://evil.example:{port}"),
               (f"127.0.0.1.evil.example:{port}", f"http://127.0.0.1.evil.example:{port}"),
               (f"localhost.evil.example:{port}", None)]
    for host, origin in foreign:
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(url, host=host, origin=origin,
                                        suppress_origin=origin is None, timeout=30)
        assert refused.value.status_code == 403, host
        assert b"Host" in (refused.value.resp_body or b""), refused.value.resp_body
    # A page elsewhere, on the real loopback address: its Origin gives it away.
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, origin="https://evil.example", timeout=30)
    assert refused.value.status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, origin="null", timeout=30)  # sandboxed or file:
    assert refused.value.status_code == 403


@pytest.mark.engine
def test_rebinding_cannot_read_metrics(open_daemon: Started) -> None:
    http, port = open_daemon.ws_url.replace("ws://", "http://"), _port(open_daemon)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(
            http + "metrics", headers={"Host": f"evil.example:{port}"}), timeout=30)
    assert refused.value.code == 403
    # /healthz stays open to probes, whatever the Host.
    probe = urllib.request.Request(http + "healthz", headers={"Host": f"evil.example:{port}"})
    with urllib.request.urlopen(probe, timeout=30) as r:
        assert json.loads(r.read()) == {"live": True, "ready": True}
    # Two Host headers (a loopback one first): refused, never read as the first.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Host: evil.example:{port}\r\n\r\n".encode())
        reply = raw.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 400") and "katapool_members_up" not in reply, reply
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"localhost.:{port}"):
        with urllib.request.urlopen(urllib.request.Request(
                http + "metrics", headers={"Host": host}), timeout=30) as r:
            assert "katapool_members_up" in r.read().decode(), host


@pytest.mark.engine
def test_local_programs_and_pages_still_work(open_daemon: Started) -> None:
    url, port = open_daemon.ws_url, _port(open_daemon)
    # KaTrain: websocket-client with its default Origin (http://127.0.0.1:PORT) ...
    _answers_version(websocket.create_connection(url, timeout=30))
    # ... or none at all, and other programs.
    _answers_version(websocket.create_connection(url, suppress_origin=True, timeout=30))
    # Pages served from this machine, under each loopback name.
    for host, origin in ((f"localhost:{port}", f"http://localhost:{port}"),
                         (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"),
                         (f"[::1]:{port}", f"http://[::1]:{port}"),
                         (f"localhost:{port}", "http://localhost:3000")):
        _answers_version(websocket.create_connection(url, host=host, origin=origin, timeout=30))
    with Client.connect(url) as client:  # katapool's own client
        assert client.query_version()["version"]


def _rejected(daemon: Started) -> int:
    return int(control.request(daemon.socket, "katapool_status")["outcomes"].get("-/rejected", 0))


@pytest.mark.engine
def test_a_flood_of_lines_does_not_stall_other_clients(open_daemon: Started) -> None:
    """Any local program may use a loopback daemon: one that sends a frame of half a million
    junk lines gets an error for each, while everyone else is served meanwhile (a status
    request sent once its first error arrived is answered before the last line is read)."""
    lines = 500_000
    before = _rejected(open_daemon)
    flood = websocket.create_connection(open_daemon.ws_url, timeout=60)
    try:
        flood.send("\n".join(["x"] * lines))
        assert "could not parse" in json.loads(flood.recv())["error"]
        assert 0 < _rejected(open_daemon) - before < lines
    finally:
        flood.close()


# --- tokens -------------------------------------------------------------------------------

def test_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    for mode in (0o640, 0o604, 0o644):
        path.chmod(mode)
        with pytest.raises(KatapoolError) as loose:
            read_token_file(path)
        message = str(loose.value)
        assert f"{mode:04o}" in message and "chmod 600" in message and str(path) in message
        assert "\n" not in message
        with pytest.raises(KatapoolError, match="chmod 600"):
            read_or_create_token(path)  # the daemon's side refuses it too
        with pytest.raises(KatapoolError, match="chmod 600"):
            channel_for("ws://127.0.0.1:1/", token_file=path)
    path.chmod(0o600)
    assert read_token_file(path) == "s3cret"
    with pytest.raises(KatapoolError, match="does not exist"):
        read_token_file(tmp_path / "missing")


def test_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token given > a token file > $KATAPOOL_TOKEN > the address's own ?token=."""
    path = tmp_path / "token"
    path.write_text("from-file\n")
    path.chmod(0o600)
    monkeypatch.setenv("KATAPOOL_TOKEN", "from-env")
    assert resolve_token("given", path) == "given"
    assert resolve_token(None, path) == "from-file"
    assert resolve_token() == "from-env"
    monkeypatch.delenv("KATAPOOL_TOKEN")
    assert resolve_token() is None
    channel = channel_for("ws://h:1/?token=in-url", token_file=path)
    assert isinstance(channel, WebSocketChannel)
    assert channel.url == "ws://h:1/" and channel.headers == {"Authorization": "Bearer from-file"}
    kept = channel_for("ws://h:1/?token=in-url")
    assert isinstance(kept, WebSocketChannel) and kept.url == "ws://h:1/?token=in-url"
    with pytest.raises(KatapoolError, match="printable"):
        resolve_token("two words")


@pytest.fixture(scope="module")
def token_daemon(kp: Katapool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    root = tmp_path_factory.mktemp("token-daemon")
    token_file = root / "daemon-token"
    token_file.write_text("tok-" + os.urandom(8).hex() + "\n")
    token_file.chmod(0o600)
    config = root / "katapool.yaml"
    config.write_text(f"models:\n  main:\n    path: {G170}\n    members: 1\n"
                      "listen:\n  websocket: 127.0.0.1:0\n  require_token: true\n")
    with running_daemon(kp, root, "--config", str(config), "--token-file", str(token_file)) \
            as started:
        yield started


@pytest.mark.engine
def test_token_from_file_and_environment(token_daemon: Started, kp: Katapool,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    url = token_daemon.ws_url
    token_file = token_daemon.state.parent / "daemon-token"
    token = token_file.read_text().strip()
    assert not (token_daemon.state / "token").exists()  # --token-file, not the default
    assert token not in " ".join(token_daemon.proc.args)  # type: ignore[arg-type]
    with Client.connect(url, token_file=token_file) as client:
        assert client.query_version()["version"]
    monkeypatch.setenv("KATAPOOL_TOKEN", token)
    with Client.connect(url) as client:
        assert client.query_version()["version"]
    monkeypatch.setenv("KATAPOOL_TOKEN", "wrong")
    with pytest.raises(ConnectionLost, match="401"):
        Client.connect(url)
    # KaTrain: the token in the URL, websocket-client's default Origin (the daemon's address).
    _answers_version(websocket.create_connection(f"{url}?token={token}", timeout=30))
    # With a token required, the Host is not checked (the token decides) ...
    port = _port(token_daemon)
    _answers_version(websocket.create_connection(
        f"{url}?token={token}", host=f"gpu-box.lan:{port}", origin=f"http://gpu-box.lan:{port}",
        timeout=30))
    # ... but a foreign page is refused even with it.
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"{url}?token={token}", origin="https://evil.example",
                                    timeout=30)
    assert refused.value.status_code == 403


@pytest.mark.engine
def test_start_refuses_a_token_file_others_can_read(kp: Katapool, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("abc\n")
    token_file.chmod(0o644)
    started = kp.run("start", "--members", "1", "--model", str(G170), "--listen",
                     "ws://127.0.0.1:0", "--token-file", str(token_file), "--state-dir",
                     str(tmp_path / "state"), "--no-dashboard", timeout=120)
    assert started.returncode != 0
    assert "chmod 600" in started.stderr and str(token_file) in started.stderr

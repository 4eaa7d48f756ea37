"""Accounts: `atelier user add | passwd`, the login the launched app asks for, and who may delete. No model runs."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import httpx
import pytest
from gradio_client import Client
from PIL import Image

from pipelines.requests import Text2ImgRequest
from storage import Gallery, GenerationRecord, ImageInput, NewGeneration, Users
from webui import app as app_module
from webui.cli import main
from webui.jobs import Jobs
from webui.settings import Settings
from webui.studio import Studio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the CLI ------------------------------------------------------------------


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def accounts(data: Path) -> Users:
    return Users(url=f"sqlite:///{data.resolve() / 'gallery.db'}")


def user_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str, *argv: str
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))  # not a terminal: two lines are read
    code = main(["user", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_user_add_reads_the_password_twice_from_stdin(monkeypatch, capsys, data: Path) -> None:
    code, out, err = user_command(monkeypatch, capsys, "first password\nfirst password\n", "add", "ada", "--admin",
                                  "--data", str(data))  # fmt: skip
    assert (code, out, err) == (0, "added admin account ada\n", "")
    code, out, _ = user_command(monkeypatch, capsys, "bob's password\r\nbob's password\r\n", "add", "bob",
                                "--data", str(data))  # fmt: skip
    assert (code, out) == (0, "added account bob\n")

    with accounts(data) as users:
        assert users.count_users() == 2
        assert users.verify("ada", "first password") and users.is_admin("ada")
        assert users.verify("bob", "bob's password") and not users.is_admin("bob")


def test_user_passwd_changes_the_password(monkeypatch, capsys, data: Path) -> None:
    user_command(monkeypatch, capsys, "first password\nfirst password\n", "add", "ada", "--data", str(data))

    code, out, _ = user_command(monkeypatch, capsys, " new password \n new password \n", "passwd", "ada",
                                "--data", str(data))  # fmt: skip

    assert (code, out) == (0, "changed the password of ada\n")
    with accounts(data) as users:
        # Spaces are part of a password; only the line end is not.
        assert users.verify("ada", " new password ") and not users.verify("ada", "first password")


def test_a_terminal_is_asked_twice_without_echo(monkeypatch, capsys, data: Path) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    prompts: list[str] = []
    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", lambda prompt: prompts.append(prompt) or "typed password")

    assert main(["user", "add", "ada", "--data", str(data)]) == 0

    assert prompts == ["Password: ", "Password again: "]
    with accounts(data) as users:
        assert users.verify("ada", "typed password")


@pytest.mark.parametrize(
    ("stdin", "argv", "message"),
    [
        ("first password\nsecond password\n", ["add", "ada"], "atelier: the two passwords differ.\n"),
        ("first password\n", ["add", "ada"], "atelier: the two passwords differ.\n"),
        ("short\nshort\n", ["add", "ada"], "atelier: password must be 8 to 1024 characters long.\n"),
        ("", ["add", "ada"], "atelier: password must be 8 to 1024 characters long.\n"),
        (
            "long enough\nlong enough\n",
            ["add", "ada lovelace"],
            "atelier: name must be 1 to 64 letters, digits, '.', '_' or '-', not 'ada lovelace'.\n",
        ),
        ("first password\nother password\n", ["passwd", "ada"], "atelier: the two passwords differ.\n"),
        ("new password\nnew password\n", ["passwd", "bob"], "atelier: No account is named 'bob'.\n"),
    ],
)
def test_refused_input_is_one_sentence_and_writes_nothing(
    monkeypatch, capsys, data: Path, stdin: str, argv: list[str], message: str
) -> None:
    if argv[0] == "passwd":
        user_command(monkeypatch, capsys, "first password\nfirst password\n", "add", "ada", "--data", str(data))

    code, out, err = user_command(monkeypatch, capsys, stdin, *argv, "--data", str(data))

    assert (code, out, err) == (2, "", message)
    if data.exists():
        with accounts(data) as users:
            assert users.count_users() == (1 if argv[0] == "passwd" else 0)
            assert argv[0] == "add" or users.verify("ada", "first password")


def test_a_name_is_added_once(monkeypatch, capsys, data: Path) -> None:
    user_command(monkeypatch, capsys, "first password\nfirst password\n", "add", "ada", "--data", str(data))

    code, _, err = user_command(monkeypatch, capsys, "other password\nother password\n", "add", "ada", "--admin",
                                "--data", str(data))  # fmt: skip

    assert (code, err) == (2, "atelier: An account named 'ada' already exists; choose another name.\n")
    with accounts(data) as users:
        assert users.verify("ada", "first password") and not users.is_admin("ada")


# -- serve ----------------------------------------------------------------------


def test_serve_says_whether_the_studio_is_single_user(monkeypatch, capsys, tmp_path: Path) -> None:
    launched: list[object] = []
    monkeypatch.setattr(app_module, "launch", lambda studio, *, access: launched.append(access))
    monkeypatch.setattr(app_module, "_warm_up", lambda studio: None)  # no model is loaded
    settings = Settings(data_dir=tmp_path / "data", user="ada", port=free_port())

    app_module.serve(settings)
    assert "No accounts: single-user studio; add one with `atelier user add NAME`" in capsys.readouterr().out

    with Users(url=settings.gallery_url) as users:
        users.add_user("ada", "first password")
    app_module.serve(settings)
    out = capsys.readouterr().out
    assert "No accounts" not in out and "1 account: everyone logs in." in out
    assert len(launched) == 2


# -- Jobs.is_admin ----------------------------------------------------------------


def test_is_admin_single_user_then_per_account(studio: Studio) -> None:
    jobs = Jobs(studio)
    assert jobs.is_admin(None) and jobs.is_admin(gr.Request(username=None))

    jobs.users.add_user("root", "root password", admin=True)
    jobs.users.add_user("ann", "ann's password")

    assert jobs.is_admin(gr.Request(username="root"))
    assert not jobs.is_admin(gr.Request(username="ann"))
    assert not jobs.is_admin(gr.Request(username="gone"))  # an account deleted while logged in
    # Accounts added while the studio runs without logins: nobody is admin until a restart turns logins on.
    assert not jobs.is_admin(gr.Request(username=None))


# -- the launched app, with accounts ------------------------------------------------

PASSWORDS = {"ann": "ann's password", "root": "root's password"}


def generation(gallery: Gallery, *, user: str, prompt: str) -> GenerationRecord:
    request = Text2ImgRequest(prompt=prompt, seed=1, width=64, height=64, sampler="Euler a")
    started = gallery.start(
        NewGeneration(
            user=user, task="txt2img", model=request.model, params=request.to_dict(), prompt=prompt,
            negative_prompt="", seed=1, sampler="Euler a", num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale, width=64, height=64, batch_size=1,
        )
    )  # fmt: skip
    image = ImageInput("output", Image.new("RGB", (64, 64), (len(prompt), 9, 9)), seed=1)
    return gallery.finish(started.id, images=[image], environment={}, timings={}, duration_ms=1)


@pytest.fixture(scope="module")
def with_accounts(tmp_path_factory) -> Iterator[tuple[Studio, str, list[GenerationRecord]]]:
    """The real app on a scratch gallery with two accounts and two generations of bob's."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("accounts"), user="ada", port=free_port())
    studio = Studio.from_settings(settings)
    with Users(url=settings.gallery_url) as users:
        users.add_user("ann", PASSWORDS["ann"])
        users.add_user("root", PASSWORDS["root"], admin=True)
    records = [generation(studio.gallery, user="bob", prompt=p) for p in ("a red circle", "a blue square")]
    app = app_module.launch(studio, prevent_thread_lock=True, quiet=True)
    yield studio, f"http://127.0.0.1:{settings.port}/", records
    app.close()
    studio.close()


def test_a_logged_in_client_reads_the_gallery(with_accounts) -> None:
    studio, url, records = with_accounts
    client = Client(url, auth=("ann", PASSWORDS["ann"]), verbose=False)

    items, info, *_ = client.predict(api_name="/gallery_page")

    assert [item["caption"] for item in items] == [f"#{r.id} · {r.prompt}" for r in reversed(records)]
    assert info == "1–2 of 2"
    # The thumbnails came through the file route, which also wants the login.
    assert all(Path(item["image"]).stat().st_size > 0 for item in items)
    record_id, *_ = client.predict(records[0].id, api_name="/gallery_record")
    assert record_id == records[0].id


@pytest.mark.parametrize("auth", [None, ("ann", "wrong password"), ("nobody", "ann's password"), ("ann", "")])
def test_a_client_without_a_good_login_is_refused(with_accounts, auth) -> None:
    _, url, _ = with_accounts
    # gradio_client raises AuthenticationError (a ValueError) for no login, a plain ValueError for a bad one.
    with pytest.raises(ValueError, match="Could not (login to|load)"):
        Client(url, auth=auth, verbose=False)


def test_every_route_asks_for_a_login(with_accounts) -> None:
    studio, url, records = with_accounts
    thumb = studio.gallery.path(records[0].outputs[0].thumb_path)
    with httpx.Client(base_url=url) as anonymous:
        assert anonymous.get("config").status_code == 401
        assert anonymous.get("gradio_api/info").status_code == 401
        assert anonymous.post("gradio_api/call/gallery_page", json={"data": []}).status_code == 401
        assert anonymous.get(f"gradio_api/file={thumb}").status_code in (401, 403)
    with httpx.Client(base_url=url) as guessing:
        assert guessing.post("login", data={"username": "ann", "password": "wrong password"}).status_code == 400
        assert guessing.get("config").status_code == 401
    with httpx.Client(base_url=url) as logged_in:
        assert logged_in.post("login", data={"username": "ann", "password": PASSWORDS["ann"]}).is_success
        assert logged_in.get("config").status_code == 200
        assert logged_in.get(f"gradio_api/file={thumb}").status_code == 200


def test_only_the_owner_or_an_admin_deletes(with_accounts) -> None:
    studio, url, records = with_accounts
    ann = Client(url, auth=("ann", PASSWORDS["ann"]), verbose=False)
    with pytest.raises(Exception, match=rf"Only bob or an admin may delete generation {records[1].id}\."):
        ann.predict(records[1].id, api_name="/delete")
    assert studio.gallery.get(records[1].id).user == "bob"

    root = Client(url, auth=("root", PASSWORDS["root"]), verbose=False)
    root.predict(records[1].id, api_name="/delete")
    assert records[1].id not in [r.id for r in studio.gallery.list(limit=10)]

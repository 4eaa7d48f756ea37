"""Who may reach the studio over HTTP: the refusal to serve a network with no account, the first admin
from a secret file, and the studio's own login sessions.

Gradio's `launch(auth=...)` calls its check with a name and a password only,
keeps its sessions in memory for ever and cannot say "wait" or "locked". So
the studio gives Gradio an `auth_dependency` instead (gradio/routes.py: it
is asked on every page, file, upload and API route, and a None there is a
401) and owns the rest: `/login` (a plain form, or a form POST from
`gradio_client`), `/logout`, the session cookie, and a redirect from a 401
page to the form. These routes are handed to the FastAPI app when it is
made (`app_kwargs["routes"]`), so they come before Gradio's own `/login`.

The client address is the connection's, or, only when the connection comes
from a configured proxy (ATELIER_TRUSTED_PROXIES), the one the proxy names
in X-Forwarded-For: uvicorn's proxy-headers middleware does that, told whom
to trust through FORWARDED_ALLOW_IPS (launch sets it; uvicorn's own default
would trust any local process).
"""

from __future__ import annotations

import asyncio
import base64
import html
import ipaddress
import math
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from storage import StorageError, UserRecord
from storage.logins import WRONG, Refusal
from webui.services import Access
from webui.settings import Settings, SettingsError

COOKIE = "atelier-session"
LOOPBACK_NAMES = ("localhost",)


def exposure_refusal(settings: Settings, accounts: int) -> str | None:
    """The sentence refusing to serve a network with no account, or None when serving is safe or asked for."""
    if accounts or settings.anonymous_allowed or is_loopback(settings.host):
        return None
    return (
        f"refusing to serve {settings.host} with no account, since anyone who can reach it could use "
        "the GPU and delete the gallery: add the first admin with `atelier user add NAME --admin` (or set "
        "ATELIER_ADMIN_USER and ATELIER_ADMIN_PASSWORD_FILE), or set ATELIER_ALLOW_ANONYMOUS=1 to serve "
        "everyone without a login."
    )


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def ensure_first_admin(settings: Settings, access: Access) -> str | None:
    """Make ATELIER_ADMIN_USER an admin from its password file if it has no account; what was done, or None.

    An existing account is left alone (its password may have been changed
    since); the password is read from the file only and never printed.
    """
    if not settings.admin_user:
        return None
    users = access.users
    try:
        users.get_user(settings.admin_user)
        return None
    except StorageError:
        pass
    path = Path(settings.admin_password_file)
    try:
        password = path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "not UTF-8 text"
        raise SettingsError(f"ATELIER_ADMIN_PASSWORD_FILE must be a readable text file; {path}: {reason}.") from None
    try:
        users.add_user(settings.admin_user, password, admin=True)
    except StorageError as error:
        raise SettingsError(f"ATELIER_ADMIN_USER / ATELIER_ADMIN_PASSWORD_FILE: {error}") from None
    access.audit.record("first-admin", actor="atelier serve", target=settings.admin_user, detail="from a secret file")
    return f"Added admin account {settings.admin_user} from ATELIER_ADMIN_PASSWORD_FILE."


def client_address(request: Any) -> str:
    """The client's address as the studio sees it (a trusted proxy's X-Forwarded-For already applied)."""
    client = getattr(request, "client", None)
    host = getattr(client, "host", None)
    return str(host)[:64] if host else "unknown"


def check_basic(access: Access, authorization: str | None, address: str) -> UserRecord | Refusal | None:
    """An HTTP Basic `Authorization` header through the same guard as the login form; None without one.

    For the HTTP API (issue 14): a client that guesses through Basic auth is
    slowed and locked exactly like one guessing through the form.
    """
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        name, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return WRONG
    if not sep:
        return WRONG
    return access.logins.check(name, password, address)


def trust_proxies(settings: Settings, environ: Any) -> None:
    """Tell uvicorn whose X-Forwarded-For to believe: the configured proxies, or nobody."""
    # uvicorn reads this when Gradio makes its server config; "" trusts no connection.
    environ["FORWARDED_ALLOW_IPS"] = ",".join(settings.proxies)


class Gate:
    """The studio's login sessions over HTTP; `app_kwargs()` and `user` are what Gradio's launch takes."""

    def __init__(self, access: Access, settings: Settings) -> None:
        self.access = access
        self.cookie_path = settings.root_path.rstrip("/") + "/" if settings.root_path else "/"
        # The decoy hash an unknown name is checked against is made on first use: make it now, so the
        # first unknown name is no slower than a known one.
        access.users.verify("", "")
        access.sessions.purge_expired()

    async def user(self, request: Request) -> str | None:
        """Gradio's auth_dependency: the logged-in name, or None (401 for everything but the login form)."""
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        return await asyncio.to_thread(self.access.sessions.user, token)

    def app_kwargs(self) -> dict[str, Any]:
        return {
            "routes": [
                Route("/login", self.login_page, methods=["GET"]),
                Route("/login", self.login, methods=["POST"]),
                Route("/login/", self.login, methods=["POST"]),
                Route("/logout", self.logout, methods=["GET", "POST"]),
            ],
            "exception_handlers": {401: self.unauthorized},
        }

    async def login_page(self, request: Request) -> Response:
        return _form()

    async def login(self, request: Request) -> Response:
        form = await request.form()
        name, password = form.get("username"), form.get("password")
        name = name.strip() if isinstance(name, str) else ""
        address = client_address(request)
        outcome = await asyncio.to_thread(self.access.logins.check, name, password, address)
        browser = _wants_html(request)
        if not hasattr(outcome, "reason"):  # a UserRecord: in
            await asyncio.to_thread(self.access.sessions.purge_expired)  # logins are rare; expired rows go here
            token = await asyncio.to_thread(self.access.sessions.start, outcome.name, address=address)
            response: Response = RedirectResponse("./", status_code=303) if browser else JSONResponse({"success": True})
            response.set_cookie(
                COOKIE,
                token,
                max_age=int(self.access.sessions.lifetime.total_seconds()),
                path=self.cookie_path,
                httponly=True,
                samesite="lax",
                secure=request.url.scheme == "https",
            )
            return response
        status = 400 if outcome.reason == "wrong" else 429
        headers = {"Retry-After": str(math.ceil(outcome.retry_after))} if outcome.retry_after else {}
        if browser:
            return _form(outcome.message, status=status, headers=headers, name=name)
        body = {"detail": outcome.message, "reason": outcome.reason, "retry_after": outcome.retry_after}
        return JSONResponse(body, status_code=status, headers=headers)

    async def logout(self, request: Request) -> Response:
        await asyncio.to_thread(self.access.sessions.end, request.cookies.get(COOKIE))
        response: Response = (
            RedirectResponse("login", status_code=303) if _wants_html(request) else JSONResponse({"success": True})
        )
        response.delete_cookie(COOKIE, path=self.cookie_path)
        return response

    async def unauthorized(self, request: Request, error: Exception) -> Response:
        # A person opening a page goes to the form; a client gets the 401 as it was raised (a Basic auth
        # challenge included). Relative, so it works under a proxy's path prefix too.
        headers = getattr(error, "headers", None) or {}
        if (
            request.method in ("GET", "HEAD")
            and _wants_html(request)
            and "www-authenticate" not in map(str.lower, headers)
        ):
            return RedirectResponse("login", status_code=303)
        detail = error.detail if isinstance(error, HTTPException) else "Not authenticated"
        return JSONResponse({"detail": detail}, status_code=401, headers=headers)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Atelier · log in</title>
<style>
body {{ font-family: system-ui, sans-serif; display: grid; place-items: center; min-height: 90vh; }}
form {{ display: grid; gap: .6rem; width: 18rem; }}
input, button {{ font: inherit; padding: .45rem; }}
p[role=alert] {{ color: #b00020; }}
</style></head>
<body><form method="post" action="login">
<h1>Atelier</h1>
<p>Log in with your Atelier account.</p>
{message}
<label>Name <input name="username" autocomplete="username" required value="{name}"></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Log in</button>
</form></body></html>
"""


def _form(message: str = "", *, status: int = 200, headers: dict[str, str] | None = None, name: str = "") -> Response:
    alert = f'<p role="alert">{html.escape(message)}</p>' if message else ""
    body = _PAGE.format(message=alert, name=html.escape(name, quote=True))
    return HTMLResponse(body, status_code=status, headers=headers or {})

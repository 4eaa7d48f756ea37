"""Who an AUTOMATIC1111-style API call acts for: HTTP Basic against the studio's own accounts.

A1111 clients (webuiapi, Open WebUI, SillyTavern) send `Authorization: Basic`
when they have a login and nothing, or an empty header, when they do not.
With accounts every call must carry a good login; without, the studio is
single-user, as its pages are, and every call acts for `settings.user`.
`authenticate` is the one place a password is checked, so a login throttle
(issue 17) can wrap it alone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

from fastapi import HTTPException, Request

from storage import Users

CHALLENGE = {"WWW-Authenticate": 'Basic realm="Atelier"'}


class ApiAuth:
    """Basic auth against `users` when `accounts` (decided at start-up, as the pages' login is)."""

    def __init__(self, users: Users, *, accounts: bool, single_user: str) -> None:
        self.users = users
        self.accounts = accounts
        self.single_user = single_user

    async def authenticate(self, request: Request) -> str | None:
        """The account name a request's Basic credentials prove, or None.

        Without accounts every request is the studio's one user. argon2 takes
        tens of milliseconds, so the check runs in a worker thread, off the
        event loop every page shares.
        """
        if not self.accounts:
            return self.single_user
        credentials = _basic_credentials(request.headers.get("authorization", ""))
        if credentials is None:
            return None
        name, password = credentials
        verified = await asyncio.to_thread(self.users.verify, name, password)
        return name if verified else None

    async def __call__(self, request: Request) -> str:
        """The FastAPI dependency: the user, or 401 with the Basic challenge clients answer."""
        user = await self.authenticate(request)
        if user is None:
            raise HTTPException(
                status_code=401, detail="Log in with an Atelier account (HTTP Basic auth).", headers=CHALLENGE
            )
        return user


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, separator, password = decoded.partition(":")
    return (name, password) if separator else None

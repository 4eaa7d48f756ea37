"""Who an AUTOMATIC1111-style API call acts for: HTTP Basic against the studio's own accounts.

A1111 clients (webuiapi, Open WebUI, SillyTavern) send `Authorization: Basic`
when they have a login and nothing, or an empty header, when they do not.
With accounts every call must carry a good login; without, the studio is
single-user, as its pages are, and every call acts for `settings.user`.
Every password goes through the studio's login guard (webui/auth.py
`check_basic`), so guessing here is slowed and locked as on the login form.
"""

from __future__ import annotations

import asyncio
import math

from fastapi import HTTPException, Request

from storage.logins import Refusal
from webui.auth import check_basic, client_address
from webui.services import Access

CHALLENGE = {"WWW-Authenticate": 'Basic realm="Atelier"'}


class ApiAuth:
    """Basic auth against the studio's accounts when `accounts` (decided at start-up, as the pages' login is)."""

    def __init__(self, access: Access, *, accounts: bool, single_user: str) -> None:
        self.access = access
        self.accounts = accounts
        self.single_user = single_user

    async def authenticate(self, request: Request) -> str | Refusal | None:
        """The account name a request's Basic credentials prove, the guard's refusal, or None without credentials.

        Without accounts every request is the studio's one user. The check goes
        through the same login guard as the form (webui/auth.py): a client that
        guesses through the API is slowed and locked like one guessing there.
        argon2 takes tens of milliseconds, so it runs in a worker thread.
        """
        if not self.accounts:
            return self.single_user
        header = request.headers.get("authorization", "")
        outcome = await asyncio.to_thread(check_basic, self.access, header, client_address(request))
        if outcome is None or isinstance(outcome, Refusal):
            return outcome
        return outcome.name

    async def __call__(self, request: Request) -> str:
        """The FastAPI dependency: the user, 401 with the Basic challenge clients answer, or 429 while throttled."""
        outcome = await self.authenticate(request)
        if isinstance(outcome, str):
            return outcome
        if isinstance(outcome, Refusal) and outcome.reason != "wrong":
            headers = {"Retry-After": str(math.ceil(outcome.retry_after))} if outcome.retry_after else {}
            raise HTTPException(status_code=429, detail=outcome.message, headers=headers)
        raise HTTPException(
            status_code=401, detail="Log in with an Atelier account (HTTP Basic auth).", headers=CHALLENGE
        )

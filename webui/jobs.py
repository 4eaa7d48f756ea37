"""Generations in flight, per browser session.

Gradio gives each browser tab (and each API client) a session hash; a Cancel
press reaches only the run that the same session started.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import gradio as gr

from pipelines.requests import GenerationRequest, RequestError
from storage import GenerationRecord, Users
from webui.studio import RerunOutcome, Studio

if TYPE_CHECKING:
    from pipelines.engine import CancelToken, ProgressFn

T = TypeVar("T")


class Jobs:
    def __init__(self, studio: Studio) -> None:
        self.studio = studio
        self._tokens: dict[str, CancelToken] = {}
        self._lock = threading.Lock()
        self._users: Users | None = None

    def user(self, request: gr.Request | None) -> str:
        # Logged-in name when the studio has accounts, else the settings' user.
        username = getattr(request, "username", None) if request is not None else None
        return username or self.studio.settings.user

    def is_admin(self, request: gr.Request | None) -> bool:
        """Whether this session may act on everyone's records.

        With no accounts the studio is single-user and its user may do
        anything; with accounts, only a logged-in admin may. A session that is
        not logged in although accounts exist (one was added after launch,
        before the restart that turns logins on) is no admin.
        """
        users = self.users
        if users.count_users() == 0:
            return True
        username = getattr(request, "username", None) if request is not None else None
        return username is not None and users.is_admin(username)

    @property
    def users(self) -> Users:
        """The accounts, opened on first use: of the tabs, only a delete reads them."""
        with self._lock:
            if self._users is None:
                self._users = Users(url=self.studio.settings.gallery_url)
            return self._users

    def submit(self, generation: GenerationRequest, *, request: gr.Request, progress: ProgressFn) -> GenerationRecord:
        return self._track(request, lambda token: self.studio.submit(
            generation, user=self.user(request), progress=progress, cancel=token
        ))

    def rerun(self, record_id: int, *, request: gr.Request, progress: ProgressFn, **changes: Any) -> RerunOutcome:
        return self._track(request, lambda token: self.studio.rerun(
            record_id, user=self.user(request), progress=progress, cancel=token, **changes
        ))

    def _track(self, request: gr.Request | None, run: Callable[[CancelToken], T]) -> T:
        # Imported here: the engine module brings torch, which the page does not need.
        from pipelines.engine import CancelToken, ModelError

        token = CancelToken()
        key = request.session_hash if request is not None else None
        with self._lock:
            if key:
                self._tokens[key] = token
        try:
            return run(token)
        except (ModelError, RequestError) as error:
            raise gr.Error(str(error)) from None
        finally:
            with self._lock:
                if key and self._tokens.get(key) is token:
                    del self._tokens[key]

    def cancel(self, request: gr.Request) -> None:
        """Stop this session's running generation at its next step."""
        with self._lock:
            token = self._tokens.get(request.session_hash)
        if token is None:
            gr.Info("Nothing is running in this tab.")
            return
        token.cancel()
        gr.Info("Cancelling at the next step…")

"""Deleting a generation: its rows at once, then the files no other record shares (files.py's removal protocol)."""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.orm import Session

from storage.errors import NotAllowed, StorageError
from storage.gallery.core import GalleryCore, referenced
from storage.models import Generation
from storage.records import GenerationRecord
from storage.validators import check_flag, check_text

_LIVE_STATUSES = ("queued", "running")


class Delete(GalleryCore):
    def delete(self, generation_id: int, *, by: str, is_admin: bool) -> GenerationRecord:
        """Delete a generation, its images, tags and board places, and the files no other record shares.

        Only its owner (the `user` it was made for) or an admin may; a running
        generation must end first, a queued one be cancelled. Returns the record as it was.
        """
        check_text(by, field="by")
        check_flag(is_admin, field="is_admin")
        self.expire_leases()
        # Files go with rows in the landing protocol's way, reversed (files.py):
        # mark the files, commit the deletion, then unlink what no row names.
        with self._landing, self._files.removing():
            with Session(self._engine) as session, session.begin():
                # 1. Check; nothing is written for a refused request.
                record = self._load(session, generation_id)
                if record.user != by and not is_admin:
                    raise NotAllowed(f"Only {record.user} or an admin may delete generation {generation_id}.")
                if record.status in _LIVE_STATUSES:
                    raise StorageError(
                        f"Generation {generation_id} is still {record.status}; cancel it before deleting it."
                    )
                # 2. Delete the rows (cascading to images, tags, board items) unless
                #    a worker claimed the job meanwhile, then mark its files.
                result = session.execute(
                    delete(Generation)
                    .where(Generation.id == generation_id, Generation.status.not_in(_LIVE_STATUSES))
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    raise StorageError(f"Generation {generation_id} started running; cancel it before deleting it.")
                shas = {image.sha256 for image in record.images}
                self._files.mark_for_removal(shas)
            # 3. Committed: remove the files that no other record shares.
            with Session(self._engine) as session, session.begin():
                kept = referenced(session, shas)
            self._files.finish_removal(shas, referenced=kept)
        return record

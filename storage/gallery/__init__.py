"""The gallery service, one module per concern behind the one `Gallery` class callers use.

service.py    Gallery: construction, closing, recovery of pending files
core.py       the state every part shares, lease expiry every reader runs first, the file landing
jobs.py       the queue: enqueue, claim_next, requeue, cancel, queue_position, queued
runs.py       a running job: start, heartbeat, finish, fail
reads.py      get, list, search, count, children
review.py     stars, review state, tags, boards
delete.py     delete, rows first and then the files no other record shares
rows.py       ORM rows to records and back, by the records' field names
"""

from storage.gallery.service import Gallery

__all__ = ["Gallery"]

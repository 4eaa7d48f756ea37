"""What storage raises. Imports nothing, so that any module, validators included, can raise these without a cycle."""


class StorageError(ValueError):
    """A request the gallery cannot honour; the message is one sentence a person can act on."""


class RecordNotFound(StorageError, LookupError):
    """The id (or board name) names no record."""


class NotAllowed(StorageError, PermissionError):
    """The person asking may not do this to this record."""


class LeaseLost(StorageError):
    """The worker no longer holds a running job's lease: it was marked interrupted, or ended, without it."""

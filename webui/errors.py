"""The studio's refusals that more than one module raises or catches.

Here, importing nothing of the project, so that the studio (which raises
them) and the GPU workers (which turn them into a waiting person's message)
share them without importing each other.
"""


class StudioError(RuntimeError):
    """A run the studio could not do for a reason a person can act on; the message says what to do."""


class QueueFull(StudioError):
    """The queue holds `queue_limit` jobs already; nothing was written."""


class GpuWorkerLost(RuntimeError):
    """The replica running a job went away after the job had started; the job is interrupted, not failed."""


class GpuWorkersUnreachable(RuntimeError):
    """The Ray cluster cannot be reached; nothing was sent."""

"""Per-step progress and cooperative cancel.

diffusers calls ``callback_on_step_end`` after every denoising step; the
engine's callback reports the step over all of a run's prompts, hands the
step's tensors to the previews, and stops the pipeline at the next step once
the run's ``CancelToken`` is set (by setting the pipeline's ``_interrupt``,
which diffusers' loops check).

No torch here: the studio's workers hand out tokens before the engine loads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

ProgressFn = Callable[[int, int], None]


class CancelToken:
    """Set by whoever asked for the run; the engine stops at the next step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


def on_step_end(
    progress: ProgressFn | None,
    cancel: CancelToken | None,
    index: int,
    count: int,
    default: int,
    preview: Callable[[int, int, dict], None] | None = None,
):
    """Per-step progress over all of a run's prompts, previews, and the cooperative cancel."""

    def callback(pipeline, step, timestep, tensors):
        steps = getattr(pipeline, "num_timesteps", default)  # fewer than asked when strength < 1
        if progress is not None:
            progress(index * steps + step + 1, count * steps)
        if preview is not None:
            preview(step, steps, tensors)
        if cancel is not None and cancel.cancelled:
            pipeline._interrupt = True
        return tensors

    return callback

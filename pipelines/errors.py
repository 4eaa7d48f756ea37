"""The engine's error, and what each model family cannot do.

``ModelError`` is for a model that cannot be found, loaded or used as asked.
``check_family`` says what a request asks that a family cannot do; the studio
runs it before queueing a job (with the family from its model list) and the
engine again on the loaded model. This module imports nothing of the project
and no torch, so the studio's queue checks stay cheap.
"""

from __future__ import annotations

from typing import Any

# The model families the engine runs, as a message names them.
FAMILY_NAMES = {"sd": "Stable Diffusion 1.x/2.x", "sdxl": "SDXL", "flux": "FLUX"}


class ModelError(RuntimeError):
    """A model that cannot be found or loaded; the message says which and why."""


def check_family(family: str, request: Any) -> None:
    """What a request (a ``GenerationRequest``) asks that this model family cannot do, said before anything runs."""
    if request.refiner is not None and family != "sdxl":
        words = FAMILY_NAMES.get(family, family)
        raise ModelError(
            f"refiner applies to SDXL models; {request.model!r} is a {words} model, so remove the refiner."
        )
    if family != "flux":
        return
    if request.negative_prompt.strip():
        raise ModelError("negative_prompt does not apply to FLUX models (their guidance is built in); leave it empty.")

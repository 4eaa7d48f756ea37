"""Everything SQLAlchemy and files: generation records, image files, migrations.

Knows nothing about torch, diffusers or Gradio (STYLE.md rule 1).
"""

from storage.db import Database
from storage.gallery import Gallery
from storage.records import (
    BoardRecord,
    GenerationRecord,
    ImageInput,
    ImageRecord,
    LeaseLost,
    NewGeneration,
    NotAllowed,
    Page,
    RecordNotFound,
    StorageError,
)
from storage.users import UserRecord, Users

__all__ = [
    "BoardRecord",
    "Database",
    "Gallery",
    "GenerationRecord",
    "ImageInput",
    "ImageRecord",
    "LeaseLost",
    "NewGeneration",
    "NotAllowed",
    "Page",
    "RecordNotFound",
    "StorageError",
    "UserRecord",
    "Users",
]

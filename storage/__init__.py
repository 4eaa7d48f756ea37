"""Everything SQLAlchemy and files: generation records, image files, migrations.

Knows nothing about torch, diffusers or Gradio (STYLE.md rule 1).
"""

from storage.db import Database
from storage.errors import LeaseLost, NotAllowed, RecordNotFound, StorageError
from storage.gallery import Gallery
from storage.records import (
    BoardRecord,
    GenerationRecord,
    ImageInput,
    ImageRecord,
    NewGeneration,
    Page,
    SearchFilter,
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
    "SearchFilter",
    "StorageError",
    "UserRecord",
    "Users",
]

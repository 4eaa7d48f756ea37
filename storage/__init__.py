"""Everything SQLAlchemy and files: generation records, image files, migrations.

Knows nothing about torch, diffusers or Gradio (STYLE.md rule 1).
"""

from storage.gallery import Gallery
from storage.records import (
    GenerationRecord,
    ImageInput,
    ImageRecord,
    NewGeneration,
    RecordNotFound,
    StorageError,
)

__all__ = [
    "Gallery",
    "GenerationRecord",
    "ImageInput",
    "ImageRecord",
    "NewGeneration",
    "RecordNotFound",
    "StorageError",
]

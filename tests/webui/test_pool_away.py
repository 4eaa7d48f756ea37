"""A GPU pool out of reach: nothing is lost, nothing fails, the job waits its turn again.

No cluster is started: the pool's address is a loopback port nothing listens on.
"""

from __future__ import annotations

import pytest

from pipelines.requests import Text2ImgRequest
from storage import Gallery
from webui.errors import GpuWorkersUnreachable
from webui.executors import UNREACHABLE, RayExecutor
from webui.settings import Settings
from webui.studio import Studio

from .conftest import free_port


@pytest.fixture
def studio(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    settings = Settings(data_dir=tmp_path / "data", user="ada", executor="ray", ray_address=address)
    settings.data_dir.mkdir()
    gallery = Gallery(url=settings.gallery_url, data_dir=settings.data_dir)
    executor = RayExecutor(address=address, retry_seconds=0)
    studio = Studio(settings=settings, gallery=gallery, engine=executor)
    yield studio
    studio.close()
    executor.close()


def test_a_job_claimed_as_the_pool_goes_away_goes_back_in_line(studio):
    queued = studio.enqueue(Text2ImgRequest(prompt="a red circle", seed=3, width=64, height=64), user="ada")
    claimed = studio.gallery.claim_next()
    assert claimed.id == queued.id

    with pytest.raises(GpuWorkersUnreachable):
        studio.run_job(claimed)

    record = studio.gallery.get(queued.id)
    assert (record.status, record.error, record.started_at) == ("queued", None, None)
    assert studio.gallery.count() == 1  # the same row, not a failed one and a copy
    assert studio.gpu_status() == UNREACHABLE

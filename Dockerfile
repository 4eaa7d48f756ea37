# syntax=docker/dockerfile:1
# Atelier: browser studio for diffusion image generation (NVIDIA GPU host).
#
# PyPI's torch Linux x86_64 wheel bundles its CUDA runtime libraries, so a
# plain python:3.11-slim base is enough; the host only needs the NVIDIA driver
# and the NVIDIA Container Toolkit.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    ATELIER_DATA_DIR=/data \
    HF_HOME=/cache/huggingface

# Minimal shared libraries for opencv-python-headless / Pillow
# (headless OpenCV needs no libgl1).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# torch + torchvision first, as a matching pair, in their own layer so that
# project changes do not re-download several GB of wheels.
RUN pip install torch==2.14.1 torchvision==0.29.1 \
    && printf 'torch==2.14.1\ntorchvision==0.29.1\n' > /etc/pip-torch-constraints.txt

WORKDIR /app
COPY . /app
# The constraints file keeps the project's dependencies from replacing the
# torch pair installed above. The ray extra (Ray Serve) lets the same image be
# the single-GPU studio, the studio on a GPU pool, a Ray head or a GPU worker
# (docker-compose.yml's `cluster` profile, docs/gpu-pool.md).
RUN pip install --constraint /etc/pip-torch-constraints.txt '.[ray]'

# Unprivileged runtime user; named volumes mounted on /data and /cache are
# initialised from these directories and so inherit their ownership.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin atelier \
    && mkdir -p /data /cache/huggingface \
    && chown -R atelier:atelier /data /cache
USER atelier

VOLUME ["/data", "/cache/huggingface"]
EXPOSE 7860

CMD ["atelier", "serve", "--host", "0.0.0.0", "--port", "7860", "--data", "/data"]

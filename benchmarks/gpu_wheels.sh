#!/usr/bin/env bash
# Run HERE, on a machine with a package index, before lending the GPU machine (it has no network).
# Downloads into .whl/ (ignored by git, carried by the device tool) the wheels the GPU machine's image
# lacks or holds at another version than Atelier's: the versions are read from this venv, so the card
# runs the library versions the tests ran. Its own torch, numpy, pillow, hub, tokenizers, accelerate stay.
#
#     benchmarks/gpu_wheels.sh [PYTHON]      # PYTHON: the venv's python (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
# .whl/ is in .gitignore: it travels only when the device tool's carry names it.
rm -rf .whl && mkdir .whl
# The device image: Python 3.12 on x86-64 Linux.
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64"
for name in diffusers transformers regex compel diffusion-prompt-embedder peft sqlalchemy alembic mako argon2-cffi argon2-cffi-bindings cffi; do
  version=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$version" ] || { echo "gpu_wheels: $name is not installed in $PY; run make install-test first." >&2; exit 1; }
  # shellcheck disable=SC2086
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLATFORMS -d .whl "$name==$version"
done
ls -1 .whl
du -sh .whl

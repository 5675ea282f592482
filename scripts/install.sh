#!/usr/bin/env bash
# Install quiltmount on a fresh Debian/Ubuntu machine: FUSE packages, a virtualenv in .venv, the project.
# Usage: scripts/install.sh [--test]     (--test also installs the test dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

packages=(fuse3 libfuse3-3 libfuse2 attr rsync python3 python3-venv python3-pip)
if [ "${1:-}" = "--test" ]; then
  packages+=(s3fs)  # tests/test_posix_metadata.py reads and writes buckets through s3fs-fuse too
fi
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
else
  .venv/bin/python -m pip install -q -e .
fi
echo "installed: $(.venv/bin/quiltmount --version) in $(pwd)/.venv"

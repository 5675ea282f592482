#!/usr/bin/env bash
# Install everything, create a small example directory and mount it.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh

EXAMPLE="${QUILTMOUNT_EXAMPLE:-$HOME/quiltmount-example}"
MOUNTPOINT="${QUILTMOUNT_MOUNTPOINT:-$HOME/quiltmount-mnt}"
.venv/bin/python scripts/make_example.py "$EXAMPLE"

mkdir -p "$MOUNTPOINT"
if grep -qs " $MOUNTPOINT fuse" /proc/mounts; then
  .venv/bin/quiltmount umount "$MOUNTPOINT"
fi
.venv/bin/quiltmount mount "$EXAMPLE" "$MOUNTPOINT"
cat <<TEXT

The example directory $EXAMPLE is mounted at $MOUNTPOINT. Try:
  ls -l $MOUNTPOINT $MOUNTPOINT/data
  cat $MOUNTPOINT/README.md
  head $MOUNTPOINT/data/iris.csv
  ls -l $MOUNTPOINT/.packages/example/iris/            # the package's revisions: symlinks to @<top hash>
  cat $MOUNTPOINT/.packages/example/iris/latest/README.md
  diff $MOUNTPOINT/.packages/example/iris/{1795424102,latest}/README.md
  getfattr -d $MOUNTPOINT/.packages/example/iris/latest/data/iris.csv
  $(pwd)/.venv/bin/quiltmount status
Mount a bucket the same way:   $(pwd)/.venv/bin/quiltmount mount s3://BUCKET /some/empty/dir
Unmount:                       $(pwd)/.venv/bin/quiltmount umount $MOUNTPOINT
TEXT

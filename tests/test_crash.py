"""`kill -9` of the daemon at random moments: while files are uploading, while a file is read and while
`rm -r` runs.  The next `quiltmount mount` of the same mountpoint must clean the stale mount itself, upload
what was staged, and lose nothing that had been closed.

Randomized but reproducible: the seed is printed; `QUILTMOUNT_CRASH_SEED` replays it and
`QUILTMOUNT_CRASH_TRIALS` runs more trials (default 3).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

from mounthelpers import fresh_record, mount_record, run_cli
from test_writes import keys, wait_for

TRIALS = int(os.environ.get("QUILTMOUNT_CRASH_TRIALS", "3"))
SIZES = (0, 1, 4096, 300_000, 9 << 20, 17 << 20)  # empty, tiny, one PUT, multipart
BIG_OBJECT = 48 << 20
TREE_FILES = 120
# Copies SRC to OUT in 256 KiB reads, slowly enough (about 2 s for BIG_OBJECT) for the kill to land mid-read.
SLOW_READER = """
import sys, time
with open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb") as out:
    while chunk := src.read(256 << 10):
        out.write(chunk)
        time.sleep(0.01)
"""


def _digest(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _remount(bucket: str, mnt: Path, endpoint: str) -> None:
    result = run_cli("mount", f"s3://{bucket}", str(mnt), "--endpoint-url", endpoint)
    assert result.returncode == 0, result.stderr


def test_kill_9_during_uploads_reads_and_rm_r_loses_nothing_closed(s3, bucket, mount, s3_server, tmp_path):
    seed = int(os.environ.get("QUILTMOUNT_CRASH_SEED", str(random.randrange(1 << 30))))
    print(f"crash trials: seed {seed}, {TRIALS} trial(s)")
    rng = random.Random(seed)
    big = rng.randbytes(BIG_OBJECT)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=big)
    mnt = mount(f"s3://{bucket}")
    written: dict[str, bytes] = {}

    for trial in range(TRIALS):
        tree = {f"tree{trial}/d{i % 7}/f{i}.txt": f"{trial}-{i}".encode() for i in range(TREE_FILES)}
        for key, data in tree.items():
            s3.put_object(Bucket=bucket, Key=key, Body=data)
        pid = int(mount_record(mnt)["pid"])

        # A reader and an `rm -r` run while files are written and closed; the daemon dies at a random moment.
        copy = tmp_path / f"read{trial}.bin"
        reader = subprocess.Popen([sys.executable, "-c", SLOW_READER, str(mnt / "big.bin"), str(copy)],
                                  stderr=subprocess.PIPE)
        remover = subprocess.Popen(["rm", "-rf", str(mnt / f"tree{trial}")], stderr=subprocess.PIPE)
        batch = {f"trial{trial}/w{i}.bin": rng.randbytes(rng.choice(SIZES)) for i in range(rng.randint(3, 8))}
        killer = threading.Timer(rng.uniform(0.05, 1.5), os.kill, (pid, signal.SIGKILL))
        closed: dict[str, bytes] = {}
        (mnt / f"trial{trial}").mkdir()
        killer.start()
        for key, data in batch.items():
            try:
                (mnt / key).write_bytes(data)
            except OSError:
                break  # the daemon is gone: this file was never closed, nothing is promised for it
            closed[key] = data
        killer.join()
        for process in (reader, remover):
            process.wait(timeout=30)  # the mount's users get an error, never a hang
        got = copy.read_bytes()
        assert got == big[:len(got)], "the reader got wrong bytes before the daemon died"

        _remount(bucket, mnt, s3_server.endpoint_url)
        written.update(closed)
        wait_for(lambda: set(written) <= keys(s3, bucket), timeout=90)
        assert fresh_record(mnt)["pending_uploads"] == 0
        for key, data in written.items():
            assert _digest(s3, bucket, key) == data, f"trial {trial} (seed {seed}): {key} has wrong bytes"
        # `rm -r` stopped part-way: what it had not reached is intact, and a second `rm -r` finishes it
        left = set(tree) & keys(s3, bucket)
        print(f"trial {trial}: {len(closed)}/{len(batch)} files closed before the kill, "
              f"{len(left)}/{len(tree)} files left by rm -r, "
              f"reader got {len(got) >> 20} MiB (exit {reader.returncode})")
        for key in left:
            assert _digest(s3, bucket, key) == tree[key]
        subprocess.run(["rm", "-rf", str(mnt / f"tree{trial}")], check=True, timeout=60)
        assert not any(key.startswith(f"tree{trial}/") for key in keys(s3, bucket))
        assert (mnt / "big.bin").read_bytes() == big

    assert mount_record(mnt)["pid"] != pid

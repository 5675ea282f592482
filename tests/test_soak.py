"""Soak: readers, a lister and writers at once on one mount for a while (`--soak-seconds`, default 40), the
daemon's RSS sampled and bounded by its memory budget, every write verified in S3 at the end."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from mounthelpers import fresh_record, mount_record
from test_writes import wait_for

BUDGET_MIB = 128
#: The daemon's own footprint on top of the cache budget (interpreter, boto3, libfuse, buffers in flight).
OVERHEAD_MIB = 160
WORKER = Path(__file__).with_name("soakworker.py")


def _peaks_by_fifth(samples: list[int]) -> str:
    """"a/b/c/d/e MiB": the peak RSS in each fifth of the run (a creep shows as a rising row)."""
    size = max(1, len(samples) // 5)
    return "/".join(f"{max(samples[start:start + size]) >> 20}" for start in range(0, size * 5, size)
                    if samples[start:start + size]) + " MiB"


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as file:
        return next(int(line.split()[1]) * 1024 for line in file if line.startswith("VmRSS:"))


def test_soak(s3, bucket, mount, tmp_path, request):
    seconds = request.config.getoption("--soak-seconds")
    rng = random.Random(7)
    objects = {f"small/{i:03d}.bin": rng.randbytes(rng.randint(0, 200_000)) for i in range(150)}
    objects.update({f"large/{i}.bin": rng.randbytes(24 << 20) for i in range(4)})
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    digests = {key: hashlib.sha256(data).hexdigest() for key, data in objects.items()}
    mnt = mount(f"s3://{bucket}", "--memory-cache-size", f"{BUDGET_MIB}M")
    pid = int(mount_record(mnt)["pid"])

    roles = [("reader", json.dumps(digests))] * 3 + [("lister", "")] + [("writer", f"w{i}") for i in range(3)]
    workers = []
    for number, (role, spec) in enumerate(roles):
        out = tmp_path / f"worker{number}.json"
        command = [sys.executable, str(WORKER), role, str(mnt), str(seconds), str(number), spec, str(out)]
        workers.append((subprocess.Popen(command, stderr=subprocess.PIPE, text=True), out))
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            samples.append(_rss(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    try:
        for process, _ in workers:
            assert process.wait(timeout=seconds + 120) == 0, process.stderr.read()
    finally:
        stop.set()
        sampler.join()
    elapsed = time.monotonic() - started
    reports = [json.loads(out.read_text()) for _, out in workers]

    wait_for(lambda: fresh_record(mnt)["pending_uploads"] == 0, timeout=120)
    expected: dict[str, str | None] = {}
    for report in reports:
        expected.update(report.get("state", {}))
    for key, digest in expected.items():
        if digest is None:
            assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=key), f"{key} was deleted"
        else:
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert hashlib.sha256(data).hexdigest() == digest, f"{key}: S3 does not hold the last bytes written"

    errors = [error for report in reports for error in report["errors"]]
    peak = max(samples)
    by_role = {role: (sum(r["operations"] for r in reports if r["role"] == role),
                      sum(r["bytes"] for r in reports if r["role"] == role)) for role, _ in roles}
    print(f"\nsoak {elapsed:.0f} s: " + ", ".join(f"{role} {ops} ops {size / 2**20:.0f} MiB"
                                               for role, (ops, size) in by_role.items())
          + f"; {len(expected)} files written and verified; peak RSS {peak / 2**20:.0f} MiB "
          f"(budget {BUDGET_MIB} MiB; by fifth of the run: {_peaks_by_fifth(samples)}); errors {len(errors)}")
    assert errors == [], errors[:10]
    assert all(ops > 0 for ops, _ in by_role.values())
    assert peak <= (BUDGET_MIB + OVERHEAD_MIB) << 20, f"peak RSS {peak >> 20} MiB"

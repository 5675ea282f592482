#!/usr/bin/env python3
"""Run s3fs-fuse's own integration tests against a quiltmount mount (and, for comparison, an s3fs mount).

Run (as root, with /dev/fuse, fusermount3, bash, curl and g++; from the project's virtualenv)::

    python scripts/s3fs_compat.py                        # every selected test against quiltmount (~5 min)
    python scripts/s3fs_compat.py --posix-metadata       # the same, mounted with --posix-metadata
    python scripts/s3fs_compat.py --against-s3fs         # also against s3fs (apt-get install -y s3fs)
    python scripts/s3fs_compat.py --only test_chmod test_symlink      # some tests (excluded ones too)
    python scripts/s3fs_compat.py -k external -k update_time          # tests whose name contains ...
    python scripts/s3fs_compat.py --list                 # the selection and the exclusions, then exit
    python scripts/s3fs_compat.py --json > out.json      # results as JSON on stdout (progress on stderr)

The tests are s3fs-fuse's ``test/integration-test-main.sh`` and ``test/test-utils.sh`` at commit
``S3FS_COMMIT`` (their GPL files are downloaded at run time from raw.githubusercontent.com into
``--cache-dir``, SHA-256 checked, never vendored; ``--s3fs-tests DIR`` takes them from a directory instead,
e.g. the ``test/`` of a checkout, unchecked).  Their small C++ helpers (``junk_data``, ``write_multiblock``,
``mknod_test``, ...) are downloaded and built with g++ the same way.

Every test function runs unmodified, as their ``run_suite`` runs it: in a bash that has sourced
``test-utils.sh`` and ``integration-test-main.sh`` (without its last three lines, which run the whole suite),
``(set -o errexit; TEST DIR)`` in a subshell, with ``TEST_TEXT_FILE``, ``TEST_DIR``, ``ALT_TEST_TEXT_FILE`` and
``BIG_FILE`` named as ``run_suite`` names them; but each test in its own new directory ``MOUNT/TEST/`` (theirs
share one ``testrun-N/``), removed afterwards, and under a timeout (``--timeout``).  The helpers sit next to the
mount point, where the tests find them (``../../junk_data``).  An ERR trap (which only prints) records the
failing command and line, for the table's "first error" column.  The "external" operations use their own
``s3_cp``/``s3_head`` (curl ``--aws-sigv4``) against the same S3 server; the variables they expect are set:
``TEST_BUCKET_1``, ``S3_URL``, ``S3_ENDPOINT``, ``TEST_BUCKET_MOUNT_POINT_1``, ``AWS_ACCESS_KEY_ID``, ...,
``S3FS_PID`` (the daemon's pid, for their ``s3fs_args``), ``CACHE_DIR``, ``TMPDIR``.

The selection: the tests their ``add_all_tests`` adds on this machine when s3fs is given no option, minus those
in ``EXCLUDED`` (they need an s3fs option or read s3fs's cache directory; pjdfstest is a separate suite).  Like
their harness, the two ``touch -a`` tests are skipped on a mount with ``relatime`` or ``noatime``.

S3 server: the project's moto test server (``tests/s3server.py``, ``S3TestServer``, ranged-GET fix) in this
process, with one more fix of ours (``install_form_body_fix``: moto drops the body of a PUT whose Content-Type is
``application/x-www-form-urlencoded``, curl's default for ``--data-binary``, which older ``s3_cp`` sent), or
``--endpoint-url``.  One bucket (``--bucket``, their default name), emptied before each mount kind's run.  Every
quiltmount daemon gets ``--cache-dir``, ``--disk-cache-dir``, ``--log-file`` and XDG directories under the run's
work directory (``--workdir``, else a temporary one, removed at the end).

Exit status: 0 when every selected test ran (whatever their results), 1 on an error of the harness itself (a
mount that fails, a download, a build), printed as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import quiltmount_command  # noqa: E402  (scripts/, beside this one)

REPO = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO / "tests"

#: s3fs-fuse commit whose tests run (master of 2026-08-22, v1.97-142-g46017f2d: 105 test functions).
S3FS_COMMIT = "46017f2d9bb5043cbb7c1165f322114295fe38f2"
S3FS_RAW_URL = "https://raw.githubusercontent.com/s3fs-fuse/s3fs-fuse/{commit}/test/{name}"
#: The files used from s3fs-fuse's test/ at S3FS_COMMIT, with their SHA-256.
S3FS_FILES: dict[str, str] = {
    "integration-test-main.sh": "ec7865d181370245330def467e1dd8de3997500fb45b3009c0b9c6e8441d04d9",
    "test-utils.sh": "631e3b5b778b8957ee6b569a187dc690e52fbb7fd2c8777b461d0adb6ac27198",
    "junk_data.cc": "0e75b633001de55f926fd9e9d970c5fc1f1fcdad186336c4557b68d0c6d6b1d9",
    "write_multiblock.cc": "52b2c58b3f445ee47a759b66c1686417e2536bb21f48eb97c81f1c063b467fbb",
    "mknod_test.cc": "45a07ea95905c456c01f13d432693699a876540ea9c5d149f20a6b999fefbcaa",
    "truncate_read_file.cc": "1d679263e54a5028720b7b787ff1908672b713e2aa60a8ef52d7373a48530b5b",
    "path_truncate.cc": "522b53416dacfb5b34da7921fa13535e146039dd59d76947ff00725ed41b4f4d",
    "cr_filename.cc": "93618cc8c7d84d2d87ab416d763078cc5b8f48e1f5539b0395b529c5d5929d0b",
    "unlink_open_file.cc": "7bda8b12118a0e1fde3ef53faf945192cb557a0018bc1d1cf1ef6c6dd403a9ae",
}
#: The C++ helpers the tests run as ../../NAME (their test/Makefile.am builds them the same way).
HELPERS = ("junk_data", "write_multiblock", "mknod_test", "truncate_read_file", "path_truncate", "cr_filename",
           "unlink_open_file")
CXXFLAGS = ("-std=c++17", "-O2", "-Wall", "-D_FILE_OFFSET_BITS=64")
#: Their harness's last lines, which run the whole suite when integration-test-main.sh is sourced.
SUITE_RUNNERS = ("init_suite", "add_all_tests", "run_suite")

DEFAULT_BUCKET = "s3fs-integration-test"  # TEST_BUCKET_1's default in their integration-test-common.sh
REGION = "us-east-1"
ACCESS_KEY = SECRET_KEY = "testing"
MOUNT_TIMEOUT = 120.0
UMOUNT_TIMEOUT = 300.0
FS_CALL_TIMEOUT = 60.0  # mkdir / rm -rf / stat of the mount made by the runner itself
KILL_GRACE = 15.0  # after SIGKILL of a timed-out test: longer means its processes wait on the FUSE daemon
ERROR_WIDTH = 110
MARKER = "s3fs-compat-err:"

#: Tests their add_all_tests adds (or defines) that are not run, with the reason.  Besides these, every
#: test_pjdfstest_* is excluded: pjdfstest is a separate POSIX suite their harness downloads and builds.
EXCLUDED: dict[str, str] = {
    "test_cache_file_stat": "needs -o use_cache: reads s3fs's cache stat files under CACHE_DIR",
    "test_zero_cache_file_stat": "needs -o use_cache: reads s3fs's cache stat files under CACHE_DIR",
    "test_clean_up_cache": "checks the free space of s3fs's cache directory (CACHE_DIR) against -o ensure_diskfree",
    "test_ensurespace_evict_cache_file": "needs -o use_cache,ensure_diskfree,fake_diskfree (s3fs's cache eviction)",
    "test_diskfull_fallback_upload": "needs -o use_cache,ensure_diskfree,fake_diskfree (s3fs's cache on a full disk)",
    "test_multipart_copy_chmod": "needs -o multipart_copy_size (s3fs's multipart server-side copy)",
    "test_max_dirty_data_flush": "needs -o max_dirty_data (s3fs's mid-write flush)",
    "test_update_parent_directory_time": "needs -o update_parent_dir_stat",
    "test_posix_acl": "needs -o use_xattr in s3fs, setfacl/getfacl, and POSIX ACLs in the FUSE mount",
    "test_chmod_mountpoint": "commented out of their add_all_tests (fails on CI depending on permissions)",
    "test_chown_mountpoint": "commented out of their add_all_tests (fails on CI depending on permissions)",
}
PJDFSTEST_PREFIX = "test_pjdfstest_"
PJDFSTEST_REASON = "pjdfstest, a separate POSIX suite their harness downloads and builds; not an s3fs test"
#: Their harness skips these when the mount has relatime or noatime (`touch -a` may not reach the file system).
ATIME_TESTS = ("test_update_time_touch_a", "test_update_directory_time_touch_a")

#: What each selected test exercises (a test not listed here is "other").
AREAS: dict[str, str] = {
    **dict.fromkeys(("test_create_empty_file", "test_append_file", "test_redirects", "test_copy_file",
                     "test_write_after_seek_ahead", "test_overwrite_existing_file_range", "test_open_second_fd",
                     "test_write_multiple_offsets", "test_write_multiple_offsets_backwards",
                     "test_write_data_with_skip", "test_not_boundary_writes", "test_mix_upload_entities",
                     "test_upload_sparsefile", "test_concurrent_reads", "test_concurrent_writes",
                     "test_multipart_upload", "test_multipart_mix", "test_special_characters", "test_cr_filename"),
                    "write/read"),
    **dict.fromkeys(("test_truncate_file", "test_truncate_upload", "test_truncate_empty_file",
                     "test_truncate_shrink_file", "test_truncate_grow_file", "test_truncate_shrink_read_file",
                     "test_truncate_closed_file"), "truncate"),
    **dict.fromkeys(("test_mv_file", "test_mv_to_exist_file", "test_mv_empty_directory",
                     "test_mv_nonempty_directory", "test_rename_before_close", "test_multipart_copy",
                     "test_update_chmod_opened_file"), "rename"),
    **dict.fromkeys(("test_mkdir_rmdir", "test_list", "test_remove_nonempty_directory", "test_rm_rf_dir",
                     "test_concurrent_directory_updates", "test_truncate_cache"), "directories"),
    **dict.fromkeys(("test_external_directory_creation", "test_external_no_slash_directory_object",
                     "test_external_modification", "test_external_creation", "test_read_external_object",
                     "test_read_external_dir_object", "test_not_existed_dir_obj",
                     "test_file_names_longer_than_posix"), "external objects"),
    **dict.fromkeys(("test_chmod", "test_chown", "test_chmod_listed_directory_keeps_metadata",
                     "test_update_metadata_external_small_object", "test_update_metadata_external_large_object"),
                    "mode/owner metadata"),
    **dict.fromkeys(("test_mtime_file", "test_utimens_during_multipart", "test_update_time_chmod",
                     "test_update_time_chown", "test_update_time_xattr", "test_update_time_touch",
                     "test_update_time_touch_a", "test_update_time_append", "test_update_time_cp_p",
                     "test_update_time_mv", "test_update_directory_time_chmod", "test_update_directory_time_chown",
                     "test_update_directory_time_touch", "test_update_directory_time_touch_a",
                     "test_update_directory_time_set_xattr", "test_update_directory_time_subdir",
                     "test_time_mountpoint"), "times"),
    "test_extended_attributes": "xattrs",
    **dict.fromkeys(("test_hardlink", "test_symlink", "test_mknod"), "links/special files"),
    "test_unlink_open_file": "unlink while open",
    "test_content_type": "Content-Type",
    "test_statvfs": "statvfs",
}

#: The s3fs options of their CI runs (integration-test-common.sh's start_s3fs plus small-integration-test.sh's
#: default flag), for --s3fs-ci-options.  `-o region` becomes `endpoint` for s3fs < 1.91.
S3FS_CI_OPTIONS = ("use_xattr=1", "enable_unsigned_payload", "stat_cache_expire=1", "stat_cache_interval_expire=1",
                   "retries=3", "sigv4")

#: One test as their run_suite runs it.  $1: the test function, $2: its directory (under the mount),
#: $3: its number (run_suite's RANDOM_STR).
RUN_ONE = r"""#!/bin/bash
# Written by quiltmount's scripts/s3fs_compat.py: run one test function of s3fs-fuse's
# integration-test-main.sh as their run_suite (test-utils.sh) does.
cd "$(dirname "$0")" || exit 97
source ./integration-test-main.sh || exit 98   # functions only; it sources test-utils.sh
cd "${TEST_BUCKET_MOUNT_POINT_1}/$2" || exit 99
RANDOM_STR=$(printf '%03d' "$3")
TEST_TEXT_FILE="test-s3fs-${RANDOM_STR}.txt"
TEST_DIR="testdir-${RANDOM_STR}"
ALT_TEST_TEXT_FILE="test-s3fs-ALT-${RANDOM_STR}.txt"
BIG_FILE="big-file-s3fs-${RANDOM_STR}.txt"
# Only prints: the failing command, where, and how deep (functions + subshells), for the report.
set -o errtrace
trap 'echo "MARKER status=$? depth=$((${#FUNCNAME[@]} + BASH_SUBSHELL)) at=${BASH_SOURCE[0]##*/}:${LINENO} cmd=${BASH_COMMAND}" >&2' ERR
set +o errexit
(set -o errexit; "$1" "$2")
""".replace("MARKER", MARKER)

#: Their add_all_tests on this machine with no s3fs option; prints the tests it adds, then every test_* function.
LIST_TESTS = r"""
cd "$(dirname "$0")" || exit 97
source ./integration-test-main.sh || exit 98
function s3fs_args { :; }   # an s3fs given no option
init_suite
add_all_tests
printf 'added %s\n' "${TEST_LIST[@]}"
declare -F | awk '$3 ~ /^test_/ {print "defined " $3}'
"""


class HarnessError(Exception):
    """An error of the harness itself (not of a test): printed as one line, exit status 1."""


class MountLost(Exception):
    """The mount broke and could not be mounted again: the remaining tests cannot run."""


# --------------------------------------------------------------------------------------------------
# s3fs-fuse's test files and helpers
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "quiltmount-s3fs-compat"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download_s3fs_tests(cache_dir: Path) -> Path:
    """s3fs-fuse's test files at S3FS_COMMIT in cache_dir/<commit>/test/ (downloaded once, SHA-256 checked)."""
    target = cache_dir / S3FS_COMMIT / "test"
    target.mkdir(parents=True, exist_ok=True)
    for name, digest in S3FS_FILES.items():
        path = target / name
        if path.exists() and sha256_of(path) == digest:
            continue
        url = S3FS_RAW_URL.format(commit=S3FS_COMMIT, name=name)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise HarnessError(f"could not download {url} ({exc}); without network, pass --s3fs-tests DIR "
                               f"(the test/ directory of an s3fs-fuse checkout at {S3FS_COMMIT[:12]})") from exc
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            raise HarnessError(f"{url}: SHA-256 {got}, expected {digest}")
        partial = path.with_suffix(path.suffix + ".part")
        partial.write_bytes(data)
        partial.replace(path)
    return target


def check_s3fs_tests(directory: Path) -> list[str]:
    """The files of S3FS_FILES missing from `directory`; a warning line per file that differs from the pin."""
    missing = [name for name in S3FS_FILES if not (directory / name).is_file()]
    if missing:
        raise HarnessError(f"{directory} lacks {', '.join(missing)} (pass the test/ directory of an s3fs-fuse "
                           f"checkout)")
    return [f"{name} differs from s3fs-fuse {S3FS_COMMIT[:12]}'s" for name, digest in S3FS_FILES.items()
            if sha256_of(directory / name) != digest]


def build_helpers(sources: Path, cache_dir: Path) -> Path:
    """Build HELPERS with g++ into cache_dir/bin-<hash of their sources>/ (once); return that directory."""
    compiler = shutil.which("g++")
    if compiler is None:
        raise HarnessError("g++ not found (apt-get install -y g++): it builds s3fs-fuse's test helpers")
    digest = hashlib.sha256(b"".join((sources / f"{name}.cc").read_bytes() for name in HELPERS)
                            + " ".join(CXXFLAGS).encode()).hexdigest()[:16]
    bin_dir = cache_dir / f"bin-{digest}"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in HELPERS:
        binary = bin_dir / name
        if binary.exists():
            continue
        result = subprocess.run([compiler, *CXXFLAGS, "-o", str(binary) + ".part", str(sources / f"{name}.cc")],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise HarnessError(f"g++ failed to build {name}: {last_line(result.stderr)}")
        os.replace(str(binary) + ".part", binary)
    return bin_dir


def functions_only(script: str) -> str:
    """integration-test-main.sh without the top-level lines that run the suite (the rest unchanged, so that
    line numbers stay those of the original)."""
    lines = script.splitlines(keepends=True)
    removed = 0
    for index, line in enumerate(lines):
        if line.rstrip("\n") in SUITE_RUNNERS:
            lines[index] = f"# {line.rstrip()}  (removed by s3fs_compat.py)\n"
            removed += 1
    if removed != len(SUITE_RUNNERS):
        raise HarnessError(f"integration-test-main.sh: expected the top-level lines {', '.join(SUITE_RUNNERS)}; "
                           f"found {removed} of them")
    return "".join(lines)


def prepare_harness(sources: Path, bin_dir: Path, workdir: Path) -> Path:
    """workdir/harness/ with test-utils.sh, the functions of integration-test-main.sh and our run-one.sh;
    the helpers linked into workdir, the parent of the mount points."""
    harness = workdir / "harness"
    harness.mkdir(exist_ok=True)
    shutil.copyfile(sources / "test-utils.sh", harness / "test-utils.sh")
    main_script = (sources / "integration-test-main.sh").read_text(encoding="utf-8")
    (harness / "integration-test-main.sh").write_text(functions_only(main_script), encoding="utf-8")
    for name, text in (("run-one.sh", RUN_ONE), ("list-tests.sh", LIST_TESTS)):
        (harness / name).write_text(text, encoding="utf-8")
        (harness / name).chmod(0o755)
    for name in HELPERS:
        link = workdir / name
        if not link.exists():
            link.symlink_to(bin_dir / name)
    return harness


@dataclass
class Selection:
    """The tests their harness adds here, what runs (in their order) and what is excluded, with reasons."""

    added: list[str]
    defined: list[str]
    selected: list[str]
    excluded: dict[str, str]


def exclusion_reason(name: str) -> str | None:
    if name.startswith(PJDFSTEST_PREFIX):
        return PJDFSTEST_REASON
    return EXCLUDED.get(name)


def list_tests(harness: Path, env: dict[str, str]) -> Selection:
    result = subprocess.run(["bash", str(harness / "list-tests.sh")], capture_output=True, text=True, env=env,
                            timeout=60, check=False)
    added = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("added ")]
    defined = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("defined ")]
    if result.returncode != 0 or not added:
        raise HarnessError(f"could not list their tests (add_all_tests): exit {result.returncode}: "
                           f"{last_line(result.stderr)}")
    excluded: dict[str, str] = {}
    for name in defined:
        reason = exclusion_reason(name)
        if reason is not None:
            excluded[name] = reason
        elif name not in added and not name.endswith("_sub"):
            excluded[name] = "not added by their add_all_tests on this machine"
    selected = [name for name in dict.fromkeys(added) if name not in excluded]
    return Selection(added, defined, selected, excluded)


# --------------------------------------------------------------------------------------------------
# The S3 server
# --------------------------------------------------------------------------------------------------


def import_from_tests(name: str) -> ModuleType:
    """A module of the project's tests/ (not a package): `s3server`, the test server."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    return importlib.import_module(name)


def install_form_body_fix() -> None:
    """Keep the body of an S3 PUT sent with Content-Type application/x-www-form-urlencoded.

    moto (5.2) lets werkzeug parse such a body as a form, so the object is stored empty; S3 and S3Proxy store
    the bytes.  curl --data-binary sends that type unless told otherwise, as s3fs-fuse's s3_cp did before it
    set application/octet-stream.  The raw body is read and cached first, and the form is set empty so that
    werkzeug never parses it.  Idempotent.
    """
    from moto.s3.responses import S3Response
    from werkzeug.datastructures import ImmutableMultiDict

    if getattr(S3Response.setup_class, "_s3fs_compat_fix", False):
        return
    original = S3Response.setup_class

    def setup_class(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if (request.method == "PUT" and request.mimetype == "application/x-www-form-urlencoded"
                and "form" not in request.__dict__):
            request.get_data(cache=True)
            request.__dict__["form"] = ImmutableMultiDict()
            request.__dict__["files"] = ImmutableMultiDict()
        return original(self, request, *args, **kwargs)

    setup_class._s3fs_compat_fix = True  # type: ignore[attr-defined]
    S3Response.setup_class = setup_class  # type: ignore[method-assign]


@contextlib.contextmanager
def s3_endpoint(args: argparse.Namespace) -> Iterator[str]:
    """The endpoint URL: --endpoint-url, or an S3TestServer in this process (with install_form_body_fix)."""
    if args.endpoint_url:
        yield args.endpoint_url
        return
    s3server = import_from_tests("s3server")
    install_form_body_fix()
    with s3server.S3TestServer() as server:
        yield server.endpoint_url


def make_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("AWS_DEFAULT_REGION", REGION),
                        config=Config(s3={"addressing_style": "path"}))


def ensure_empty_bucket(s3: Any, bucket: str) -> None:
    """Create `bucket` if needed, then delete everything in it (objects and unfinished multipart uploads)."""
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        for start in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[start:start + 1000], "Quiet": True})
    for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


# --------------------------------------------------------------------------------------------------
# Mounts
# --------------------------------------------------------------------------------------------------


def mount_entry(path: str) -> tuple[str, str, str] | None:
    """(device major:minor, fs type, mount options) of the mount at `path`, or None (reads no file of it)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if fields[4] == path:
                separator = fields.index("-")
                return fields[2], fields[separator + 1], fields[5]
    return None


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def fs_call(argv: list[str], timeout: float = FS_CALL_TIMEOUT) -> str | None:
    """Run a command on the mount without ever blocking the runner; None if it worked, else why not."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                                start_new_session=True)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(argv)}` took over {timeout:g} s"
    if result.returncode != 0:
        return f"`{' '.join(argv)}` exited {result.returncode}: {last_line(result.stderr)}"
    return None


class Target:
    """A mount the tests run on; subclasses: QuiltmountTarget, S3fsTarget."""

    kind = ""

    def __init__(self, run: Run, mountpoint: Path) -> None:
        self.run = run
        self.mountpoint = mountpoint
        self.pid = 0
        self.mounts = 0  # how many times it was mounted (remounts after a dead or hung mount)

    def describe(self) -> str:
        raise NotImplementedError

    def options(self) -> list[str]:
        raise NotImplementedError

    def mount(self) -> None:
        raise NotImplementedError

    def umount(self) -> None:
        raise NotImplementedError

    def healthy(self) -> str | None:
        """None if the mount answers, else what is wrong."""
        if self.pid and not pid_alive(self.pid):
            return f"the {self.kind} daemon (pid {self.pid}) exited"
        if mount_entry(str(self.mountpoint)) is None:
            return f"{self.mountpoint} is no longer mounted"
        return fs_call(["stat", str(self.mountpoint)], timeout=15.0)

    def abort(self) -> None:
        """End a hung mount: abort its FUSE connection (processes waiting on it get ENOTCONN), kill the daemon,
        unmount lazily."""
        entry = mount_entry(str(self.mountpoint))
        if entry is not None:
            minor = entry[0].split(":")[1]
            with contextlib.suppress(OSError):
                Path(f"/sys/fs/fuse/connections/{minor}/abort").write_text("1")
        if self.pid and pid_alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True, check=False)
        self.pid = 0

    def remount(self) -> None:
        self.abort()
        self.mount()


class QuiltmountTarget(Target):
    kind = "quiltmount"

    def __init__(self, run: Run, mountpoint: Path) -> None:
        super().__init__(run, mountpoint)
        self.qm = quiltmount_command()
        self.log_file = run.workdir / "logs" / "quiltmount.log"

    def describe(self) -> str:
        return "quiltmount mount " + (" ".join(self.options()) or "(default options)")

    def options(self) -> list[str]:
        args = self.run.args
        return [*(["--posix-metadata"] if args.posix_metadata else []), *args.mount_arg]

    def quiltmount(self, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.qm, *argv], capture_output=True, text=True, timeout=timeout, check=False,
                              env=self.run.daemon_env)

    def mount(self) -> None:
        work = self.run.workdir
        argv = ["mount", f"s3://{self.run.bucket}", str(self.mountpoint), "--endpoint-url", self.run.endpoint,
                "--cache-dir", str(work / "quiltmount-cache"), "--disk-cache-dir", str(work / "disk-cache"),
                "--log-file", str(self.log_file), *self.options()]
        result = self.quiltmount(*argv, timeout=MOUNT_TIMEOUT)
        if result.returncode != 0:
            message = last_line(result.stderr) or f"exit status {result.returncode}"
            if self.run.args.posix_metadata and "--posix-metadata" in result.stderr:
                raise HarnessError("quiltmount mount does not accept --posix-metadata (not built yet?): " + message)
            raise HarnessError(f"quiltmount mount failed: {message}")
        self.pid = self.daemon_pid()
        self.mounts += 1

    def daemon_pid(self) -> int:
        result = self.quiltmount("status", "--json", timeout=60)
        with contextlib.suppress(ValueError):
            for record in json.loads(result.stdout).get("mounts", []):
                if record.get("mountpoint") == str(self.mountpoint):
                    return int(record["pid"])
        return 0  # not fatal: s3fs_args and the health check then do without it

    def umount(self) -> None:
        if mount_entry(str(self.mountpoint)) is None and not (self.pid and pid_alive(self.pid)):
            return
        try:
            result = self.quiltmount("umount", str(self.mountpoint), timeout=UMOUNT_TIMEOUT)
            failed = result.returncode != 0 and last_line(result.stderr)
        except subprocess.TimeoutExpired:
            failed = f"took over {UMOUNT_TIMEOUT:g} s"
        if failed:
            print(f"warning: quiltmount umount {self.mountpoint}: {failed}; unmounting lazily", file=sys.stderr)
            self.abort()


class S3fsTarget(Target):
    kind = "s3fs"

    def __init__(self, run: Run, mountpoint: Path) -> None:
        super().__init__(run, mountpoint)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = run.workdir / "logs" / "s3fs.log"
        self.passwd_file = run.workdir / "passwd-s3fs"
        self.binary = shutil.which("s3fs")
        if self.binary is None:
            raise HarnessError("s3fs not found (apt-get install -y s3fs), needed by --against-s3fs")
        self.version = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                                      check=False).stdout.split("\n", 1)[0].strip()
        help_text = subprocess.run([self.binary, "--help"], capture_output=True, text=True, check=False).stdout
        known = set(re.findall(r"^\s+(\w+)", help_text, re.MULTILINE))
        #: --s3fs-ci-options this s3fs knows (an older s3fs refuses to mount with an unknown option)
        self.ci_options = [option for option in S3FS_CI_OPTIONS if option.split("=")[0] in known]
        self.unknown_ci_options = [option for option in S3FS_CI_OPTIONS if option not in self.ci_options]

    def describe(self) -> str:
        dropped = (f" (CI options it does not know, left out: {','.join(self.unknown_ci_options)})"
                   if self.run.args.s3fs_ci_options and self.unknown_ci_options else "")
        return f"{self.version}: s3fs -o " + ",".join(self.options()) + dropped

    def options(self) -> list[str]:
        args = self.run.args
        options = [f"url={self.run.endpoint}", "use_path_request_style", f"passwd_file={self.passwd_file}"]
        if args.s3fs_ci_options:
            options.extend(self.ci_options)
        options.extend(option for value in args.s3fs_option for option in value.split(",") if option)
        return options

    def mount(self) -> None:
        self.passwd_file.write_text(f"{os.environ['AWS_ACCESS_KEY_ID']}:{os.environ['AWS_SECRET_ACCESS_KEY']}\n")
        self.passwd_file.chmod(0o600)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen([self.binary or "s3fs", self.run.bucket, str(self.mountpoint), "-f",
                                             "-o", ",".join(self.options())],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while mount_entry(str(self.mountpoint)) is None:
            if self.process.poll() is not None:
                raise HarnessError(f"s3fs exited {self.process.returncode} before mounting: "
                                   f"{last_line(self.log_file.read_text(errors='replace'))}")
            if time.monotonic() > deadline:
                raise HarnessError(f"s3fs did not mount {self.mountpoint} within {MOUNT_TIMEOUT:g} s")
            time.sleep(0.1)
        self.pid = self.process.pid
        self.mounts += 1

    def umount(self) -> None:
        if mount_entry(str(self.mountpoint)) is not None:
            if fs_call(["fusermount3", "-u", str(self.mountpoint)]) is not None:
                self.abort()
        if self.process is not None:
            try:
                self.process.wait(UMOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def abort(self) -> None:
        super().abort()
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)


# --------------------------------------------------------------------------------------------------
# Running tests
# --------------------------------------------------------------------------------------------------


@dataclass
class TestResult:
    test: str
    result: str  # pass, fail, skip (not run, see error), timeout, error (the harness could not run it)
    seconds: float
    error: str = ""
    area: str = ""
    status: int | None = None  # the bash's exit status
    failed_command: str = ""  # the ERR trap's innermost record: file:line, command
    log: str = ""
    notes: list[str] = field(default_factory=list)
    output_tail: list[str] = field(default_factory=list)


@dataclass
class TargetReport:
    kind: str
    description: str
    results: list[TestResult]
    mounts: int
    seconds: float

    @property
    def counts(self) -> dict[str, int]:
        run = [result for result in self.results if result.result != "skip"]
        return {"passed": sum(result.result == "pass" for result in run), "run": len(run),
                "skipped": len(self.results) - len(run)}


class Run:
    """Shared state of one invocation: arguments, work directory, server, harness, environment."""

    def __init__(self, args: argparse.Namespace, workdir: Path, endpoint: str, harness: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.endpoint = endpoint
        self.harness = harness
        self.bucket: str = args.bucket
        xdg = workdir / "xdg"
        self.daemon_env = {**os.environ, "XDG_CACHE_HOME": str(xdg / "cache"), "XDG_STATE_HOME": str(xdg / "state"),
                           "XDG_CONFIG_HOME": str(xdg / "config"), "XDG_DATA_HOME": str(xdg / "data")}
        for name in ("logs", "tmp", "s3fs-cache", "quiltmount-cache", "disk-cache"):
            (workdir / name).mkdir(exist_ok=True)

    def test_env(self, target: Target) -> dict[str, str]:
        """What their integration-test-common.sh and small-integration-test.sh export, for this target."""
        return {**self.daemon_env,
                "TEST_BUCKET_1": self.bucket, "S3_URL": self.endpoint, "S3_ENDPOINT": REGION,
                "S3PROXY_CACERT_FILE": "", "TEST_BUCKET_MOUNT_POINT_1": str(target.mountpoint),
                "TEST_SCRIPT_DIR": str(self.harness), "S3FS_PID": str(target.pid or ""),
                "CACHE_DIR": str(self.workdir / "s3fs-cache"), "ENSURE_DISKFREE_SIZE": "10",
                "FAKE_FREE_DISK_SIZE": "200", "TMPDIR": str(self.workdir / "tmp"),
                "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"]}


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


_MARKER_RE = re.compile(rf"^{re.escape(MARKER)} status=(\d+) depth=(\d+) at=(\S+) cmd=(.*)$")
_NOISE_RE = re.compile(r"^(test_\w+: \".*\"|\d+\+\d+ records (in|out)|\d+ bytes .* copied.*|Comparing test file.*"
                       r"|bash: warning: setlocale: .*|.*: warning: setlocale: .*)$")


def first_error(lines: list[str], status: int) -> tuple[str, str]:
    """(first error line, failing command) of a failed test's output.

    The ERR trap prints a record for the failing command, then one for each function call it made fail, up to
    the test's subshell, with decreasing depth: the first record of that last chain is where it failed.  The
    message is the last output line before it that is not noise (the test's own `echo`, or the failing
    command's complaint)."""
    markers = [(index, _MARKER_RE.match(line)) for index, line in enumerate(lines)]
    found = [(index, match) for index, match in markers if match]
    if not found:
        message = next((line for line in reversed(lines) if line.strip() and not _NOISE_RE.match(line)), "")
        return (message or f"exit status {status}"), ""
    origin = len(found) - 1
    while origin > 0 and int(found[origin - 1][1].group(2)) > int(found[origin][1].group(2)):
        origin -= 1
    index, match = found[origin]
    # In run-one.sh: the test function itself returned non-zero (`return 1` after its own message).
    command = "" if match.group(3).startswith("run-one.sh:") else (
        f"at {match.group(3)}" if match.group(4).startswith("return ") else f"{match.group(4).strip()} ({match.group(3)})")
    message = ""
    for line in reversed(lines[:index]):
        if line.strip() and not _NOISE_RE.match(line) and not _MARKER_RE.match(line):
            message = line.strip()
            break
    if not command:
        return (message or f"the test returned {status}"), ""
    return (f"{message} [{command}]" if message else command), command


def output_tail(path: Path, count: int = 40) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-count:]
    except OSError:
        return []


def run_test(run: Run, target: Target, name: str, number: int, log_dir: Path) -> TestResult:
    args = run.args
    result = TestResult(name, "error", 0.0, area=AREAS.get(name, "other"))
    reason = exclusion_reason(name)
    if reason:
        result.notes.append(f"excluded from the selection ({reason}); run because --only names it")
    if name in ATIME_TESTS:
        entry = mount_entry(str(target.mountpoint))
        atime_option = next((option for option in (entry[2].split(",") if entry else [])
                             if option in ("relatime", "noatime")), None)
        if atime_option:
            result.result = "skip"
            result.error = f"{atime_option} mount: their harness skips `touch -a` tests there"
            return result
    if mount_entry(str(target.mountpoint)) is None:  # never let a test write into the bare mount point
        result.notes.append(f"{target.mountpoint} was not mounted before the test: remounted")
        remount(target)
    directory = target.mountpoint / name
    problem = fs_call(["rm", "-rf", str(directory)]) or fs_call(["mkdir", str(directory)])
    if problem:
        result.error = f"could not make the test's directory: {problem}"
        return result
    log_path = log_dir / f"{target.kind}-{name}.log"
    result.log = str(log_path)
    start = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["bash", str(run.harness / "run-one.sh"), name, name, str(number)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=run.test_env(target), cwd=str(run.harness), start_new_session=True)
        try:
            status: int | None = process.wait(args.timeout)
        except subprocess.TimeoutExpired:
            status = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            try:
                process.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:  # its processes wait on the FUSE daemon: end the mount
                result.notes.append("the test's processes hung on the mount: FUSE connection aborted")
                target.abort()
                process.wait()
    result.seconds = round(time.monotonic() - start, 2)
    lines = log_path.read_text(errors="replace").splitlines()
    result.status = status
    if status is None:
        result.result = "timeout"
        result.error = f"over {args.timeout:g} s; last output: {last_line(chr(10).join(lines))}"
    elif status == 0:
        result.result = "pass"
    else:
        result.result = "fail"
        result.error, result.failed_command = first_error(lines, status)
    if result.result != "pass":
        result.output_tail = lines[-40:]
    unhealthy = target.healthy()
    if unhealthy:
        result.notes.append(f"mount broken after the test ({unhealthy}): remounted")
        if result.result == "pass":
            result.result = "fail"
            result.error = f"mount broken after the test: {unhealthy}"
        remount(target)
    elif not args.keep_dirs:
        problem = fs_call(["rm", "-rf", str(directory)], timeout=args.timeout)
        if problem:
            result.notes.append(f"cleanup: {problem}")
    return result


def remount(target: Target) -> None:
    try:
        target.remount()
    except HarnessError as exc:
        raise MountLost(str(exc)) from exc


def run_target(run: Run, target: Target, tests: list[str], numbers: dict[str, int], progress: Any) -> TargetReport:
    ensure_empty_bucket(make_client(run.endpoint), run.bucket)
    target.mountpoint.mkdir(exist_ok=True)
    print(f"mounting: {target.describe()}", file=progress, flush=True)
    start = time.monotonic()
    results: list[TestResult] = []
    target.mount()
    try:
        for index, name in enumerate(tests, 1):
            try:
                result = run_test(run, target, name, numbers[name], run.workdir / "logs")
            except MountLost as exc:
                print(f"error: the {target.kind} mount broke and could not be mounted again: {exc}",
                      file=sys.stderr, flush=True)
                results.extend(TestResult(left, "error", 0.0, f"not run: the mount was lost ({exc})",
                                          AREAS.get(left, "other")) for left in tests[index - 1:])
                break
            results.append(result)
            error = f"  {result.error[:ERROR_WIDTH]}" if result.error else ""
            print(f"[{index:>3}/{len(tests)}] {target.kind}: {name:<48} {result.result:<7} {result.seconds:7.1f} s"
                  f"{error}", file=progress, flush=True)
    finally:
        target.umount()
    return TargetReport(target.kind, target.describe(), results, target.mounts, round(time.monotonic() - start, 1))


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


def print_table(report: TargetReport) -> None:
    counts = report.counts
    print(f"\n{report.kind}: {report.description}")
    rows = [("test", "result", "seconds", "first error")]
    rows += [(r.test, r.result, f"{r.seconds:.1f}", r.error[:ERROR_WIDTH]) for r in report.results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for index, row in enumerate(rows):
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}".rstrip())
        if index == 0:
            print(f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * widths[2]}  {'-' * 11}")
    failed: dict[str, int] = {}
    for result in report.results:
        if result.result not in ("pass", "skip"):
            failed[result.area] = failed.get(result.area, 0) + 1
    by_area = ", ".join(f"{area} {count}" for area, count in sorted(failed.items(), key=lambda item: -item[1]))
    print(f"{report.kind}: {counts['passed']} of {counts['run']} passed ({counts['skipped']} skipped; "
          f"{report.seconds:.0f} s; mounted {report.mounts} time(s))" + (f"; failed by area: {by_area}" if by_area
                                                                         else ""))


def print_comparison(reports: list[TargetReport]) -> None:
    first, second = reports
    other = {result.test: result.result for result in second.results}
    groups: dict[str, list[str]] = {}
    for result in first.results:
        if result.result == "skip" or other.get(result.test, "skip") == "skip":
            continue
        key = ("both pass" if result.result == "pass" and other[result.test] == "pass" else
               f"only {first.kind} passes" if result.result == "pass" else
               f"only {second.kind} passes" if other[result.test] == "pass" else "both fail")
        groups.setdefault(key, []).append(result.test)
    print(f"\n{first.kind} vs {second.kind}:")
    for key in ("both pass", f"only {first.kind} passes", f"only {second.kind} passes", "both fail"):
        names = groups.get(key, [])
        print(f"  {key} ({len(names)}){': ' + ' '.join(names) if names and key != 'both pass' else ''}")


def environment(args: argparse.Namespace) -> dict[str, Any]:
    def run(argv: list[str]) -> str:
        with contextlib.suppress(Exception):
            return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO).stdout.strip()
        return ""

    return {"python": platform.python_version(), "kernel": platform.release(),
            "git": run(["git", "describe", "--always", "--dirty"]),
            "quiltmount": run([*quiltmount_command(), "--version"]),
            "bash": run(["bash", "--version"]).split("\n", 1)[0], "curl": run(["curl", "--version"]).split("\n", 1)[0],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def print_selection(selection: Selection, source: str) -> None:
    print(f"s3fs-fuse tests from {source}")
    print(f"their add_all_tests adds {len(selection.added)} tests here (no s3fs option); {len(selection.defined)} "
          f"test_* functions are defined")
    print(f"\nselected ({len(selection.selected)}; {', '.join(ATIME_TESTS)} are skipped on relatime/noatime mounts):")
    for name in selection.selected:
        print(f"  {name:<48} {AREAS.get(name, 'other')}")
    print(f"\nexcluded ({len(selection.excluded)}):")
    for name, reason in selection.excluded.items():
        print(f"  {name:<48} {reason}")


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--s3fs-tests", metavar="DIR", type=Path,
                        help="take s3fs-fuse's test files from DIR (e.g. a checkout's test/) instead of downloading "
                             f"them at commit {S3FS_COMMIT[:12]}")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                        help="where downloaded test files and built helpers are kept")
    parser.add_argument("--workdir", type=Path,
                        help="work directory (mount points, logs, daemon caches), kept; default: a temporary one, "
                             "removed at the end")
    parser.add_argument("--endpoint-url", help="use this S3 server instead of starting tests/s3server.py's")
    parser.add_argument("--bucket", default=DEFAULT_BUCKET, help="bucket the tests use (created, emptied)")
    parser.add_argument("--posix-metadata", action="store_true", help="mount quiltmount with --posix-metadata")
    parser.add_argument("--mount-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for `quiltmount mount` (repeatable; e.g. --mount-arg=--metadata-ttl "
                             "--mount-arg=1)")
    parser.add_argument("--against-s3fs", action="store_true",
                        help="also run the tests on an s3fs mount of the same bucket, and compare")
    parser.add_argument("--s3fs-only", action="store_true", help="run the tests on s3fs only")
    parser.add_argument("--s3fs-ci-options", action="store_true",
                        help="mount s3fs with their CI's options: " + ",".join(S3FS_CI_OPTIONS))
    parser.add_argument("--s3fs-option", action="append", default=[], metavar="OPT[,OPT...]",
                        help="more s3fs -o options (repeatable)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these tests (even excluded ones), in this order")
    parser.add_argument("-k", dest="substrings", action="append", default=[], metavar="SUBSTRING",
                        help="run the tests whose name contains SUBSTRING (repeatable: any of them)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per test")
    parser.add_argument("--keep-dirs", action="store_true", help="do not remove each test's directory afterwards")
    parser.add_argument("--list", action="store_true", help="print the selection and the exclusions, then exit")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout (progress on stderr)")
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    return parser.parse_args(argv)


def chosen_tests(args: argparse.Namespace, selection: Selection) -> list[str]:
    if args.only:
        unknown = [name for name in args.only if name not in selection.defined]
        if unknown:
            raise HarnessError(f"no such test function: {', '.join(unknown)} (see --list)")
        tests = list(dict.fromkeys(args.only))
    else:
        tests = list(selection.selected)
    if args.substrings:
        tests = [name for name in tests if any(part in name for part in args.substrings)]
    if not tests:
        raise HarnessError("no test matches --only/-k (see --list)")
    return tests


def check_tools(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        print("warning: not root; FUSE mounts and some tests (chown, mknod) may fail", file=sys.stderr)
    for tool in ("bash", "curl", "fusermount3", "setfattr"):
        if shutil.which(tool) is None:
            package = {"fusermount3": "fuse3", "setfattr": "attr"}.get(tool, tool)
            raise HarnessError(f"{tool} not found (apt-get install -y {package}): the tests need it")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name, value in (("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                        ("AWS_DEFAULT_REGION", REGION)):
        os.environ.setdefault(name, value)
    progress = sys.stderr if args.json else sys.stdout
    try:
        check_tools(args)
        if args.s3fs_tests:
            sources, source = args.s3fs_tests.resolve(), str(args.s3fs_tests.resolve())
            for warning in check_s3fs_tests(sources):
                print(f"warning: {warning}", file=sys.stderr)
        else:
            sources, source = download_s3fs_tests(args.cache_dir), f"s3fs-fuse {S3FS_COMMIT}"
        bin_dir = build_helpers(sources, args.cache_dir)
        with contextlib.ExitStack() as stack:
            if args.workdir:
                workdir = args.workdir.resolve()
                workdir.mkdir(parents=True, exist_ok=True)
            else:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="s3fs-compat-")))
            harness = prepare_harness(sources, bin_dir, workdir)
            selection = list_tests(harness, os.environ.copy())
            if args.list:
                print_selection(selection, source)
                return 0
            tests = chosen_tests(args, selection)
            numbers = {name: index for index, name in enumerate(tests, 1)}  # run_suite's RANDOM_STR
            endpoint = stack.enter_context(s3_endpoint(args))
            run = Run(args, workdir, endpoint, harness)
            kinds = ["s3fs"] if args.s3fs_only else ["quiltmount", "s3fs"] if args.against_s3fs else ["quiltmount"]
            print(f"s3fs-fuse tests from {source}: {len(tests)} test(s); S3 endpoint {endpoint}, bucket {run.bucket}; "
                  f"work directory {workdir}", file=progress, flush=True)
            reports = []
            for kind in kinds:
                target_class = QuiltmountTarget if kind == "quiltmount" else S3fsTarget
                reports.append(run_target(run, target_class(run, workdir / f"mnt-{kind}"), tests, numbers, progress))
            output = {"s3fs_fuse": {"source": source, "commit": None if args.s3fs_tests else S3FS_COMMIT},
                      "selection": selection.selected, "excluded": selection.excluded, "tests": tests,
                      "environment": environment(args), "workdir": str(workdir) if args.workdir else None,
                      "targets": {report.kind: {"description": report.description, **report.counts,
                                                "mounts": report.mounts, "seconds": report.seconds,
                                                "results": [{**asdict(result), "log": result.log if args.workdir
                                                             else ""} for result in report.results]}
                                  for report in reports}}
            if args.json_out:
                args.json_out.write_text(json.dumps(output, indent=2) + "\n", encoding="utf-8")
            if args.json:
                json.dump(output, sys.stdout, indent=2)
                print()
            else:
                for report in reports:
                    print_table(report)
                if len(reports) == 2:
                    print_comparison(reports)
                if args.workdir:
                    print(f"\nlogs: {workdir / 'logs'}")
            for report in reports:
                counts = report.counts
                print(f"{report.kind}: {counts['passed']} of {counts['run']} passed", file=progress, flush=True)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

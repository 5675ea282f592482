"""The `quiltmount` command: argument parsing, exit codes, tables and --json.  Calls the layers below.

Exit status: 0 success, 1 failure (one line on stderr), 2 usage error, 141 stdout's reader went away.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import select
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from quiltmount import argtypes, state
from quiltmount.errors import QuiltmountError, UserError
from quiltmount.names import one_line
from quiltmount.paths import disk_cache_dir
from quiltmount.units import format_size, parse_size
from quiltmount.version import __version__

if TYPE_CHECKING:
    from tqdm import tqdm

    from quiltmount.storage import Source

UMOUNT_WAIT = 600.0
#: The exit status once stdout's reader went away: as if killed by SIGPIPE (which Python ignores), what a
#: shell reports for `yes | head -1`.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
#: Failed uploads, and files set aside after a crash, that `status` names one per line (of each).
UPLOAD_LINES = 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quiltmount", description="Mount S3 buckets, local directories and Quilt "
                                     "packages as directories; manage a Quilt stack like quilt3.")
    parser.add_argument("--version", action="version", version=f"quiltmount {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser("mount", help="mount a bucket, directory or package",
                                description="Mount SOURCE (s3://BUCKET[/PREFIX/], file:///DIR, DIR or "
                                            "quilt+s3://BUCKET#package=NS/NAME[@HASH|:TAG]) at MOUNTPOINT.")
    mount.add_argument("source", metavar="SOURCE")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT")
    mount.add_argument("-f", "--foreground", action="store_true", help="stay attached (containers, systemd)")
    mount.add_argument("--read-only", action="store_true", help="refuse every write with EROFS")
    mount.add_argument("--as-of", type=argtypes.timestamp, metavar="TIMESTAMP",
                       help="show the bucket as it was at TIMESTAMP (ISO 8601 with a time zone, e.g. "
                            "2026-12-07T03:15:00Z, or Unix seconds), from its object versions; read-only")
    mount.add_argument("--sync-on-close", action="store_true",
                       help="close() returns only once the file is uploaded (default: uploads run in the background)")
    mount.add_argument("--upload-attempts", type=argtypes.positive, default=5, metavar="N",
                       help="tries per upload, with exponential backoff from 0.5 s, before it is reported failed (5)")
    mount.add_argument("--cache-dir", help="cache directory (default: stable per source under "
                                           "$XDG_CACHE_HOME/quiltmount/)")
    mount.add_argument("--disk-cache-size", type=argtypes.disk_cap, metavar="SIZE",
                       help="cap of the disk cache shared by every mount, kept for the next ones (a new cache: the "
                            "smaller of 10G and 10%% of the free space); 0 turns it off for this mount")
    mount.add_argument("--disk-cache-dir", metavar="DIR",
                       help="where the shared disk cache is (default: $QUILTMOUNT_DISK_CACHE_DIR, else "
                            "$XDG_CACHE_HOME/quiltmount/blocks)")
    mount.add_argument("--memory-cache-size", type=argtypes.memory_budget, default=parse_size("512M"),
                       metavar="SIZE",
                       help="memory budget for cached blocks and read-ahead (default 512M, at least 16M)")
    mount.add_argument("--metadata-ttl", type=argtypes.ttl, default=10.0, metavar="SECONDS|indefinite",
                       help="how long listings and attributes are trusted (default 10)")
    mount.add_argument("--negative-metadata-ttl", type=argtypes.ttl, metavar="SECONDS|indefinite",
                       help="how long a name found missing (not in S3, or not in a listing) is trusted to be "
                            "missing before S3 is asked again (default 1, or --metadata-ttl if shorter)")
    mount.add_argument("--uid", type=argtypes.id_number, help="owner of every file (default: the mounting user)")
    mount.add_argument("--gid", type=argtypes.id_number, help="group of every file (default: the mounting user's group)")
    mount.add_argument("--file-mode", type=argtypes.mode, metavar="MODE",
                       help="file permissions (0644; with --posix-metadata, of objects without a mode: 0640, as s3fs)")
    mount.add_argument("--dir-mode", type=argtypes.mode, metavar="MODE",
                       help="directory permissions (0755; with --posix-metadata, of directories without a mode: "
                            "0750, as s3fs)")
    mount.add_argument("--allow-other", action="store_true",
                       help="let other users use the mount (needs user_allow_other in /etc/fuse.conf unless root)")
    mount.add_argument("--log-file", help="daemon log, in an existing directory (default under "
                                          "$XDG_STATE_HOME/quiltmount/logs/, created if needed)")
    mount.add_argument("--log-level", default="INFO", type=str.upper,
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (INFO)")
    mount.add_argument("--profile", help="AWS profile for S3 sources")
    mount.add_argument("--region", type=argtypes.region, help="AWS region for S3 sources")
    mount.add_argument("--endpoint-url", type=argtypes.endpoint_url,
                       help="S3-compatible endpoint, http(s)://HOST[:PORT] (also AWS_ENDPOINT_URL); path-style")
    mount.add_argument("--quilt-credentials", action="store_true",
                       help="use the AWS credentials of the Quilt catalog you are logged in to (quiltmount "
                            "login), refreshed before they expire, instead of the AWS default chain")
    mount.add_argument("--s3-timeout", type=argtypes.positive, default=10, metavar="SECONDS",
                       help="S3 silence (connecting, or between bytes) after which a request is retried (10)")
    mount.add_argument("--search-limit", type=argtypes.positive, default=1000, metavar="N",
                       help="most hits shown in a .search/QUERY/ directory (1000)")
    mount.add_argument("--kernel-cache-entries", type=argtypes.non_negative, default=65_536, metavar="N",
                       help="entries the kernel may cache under one top-level name before they are dropped "
                            "(bounds the daemon's memory; 0: never drop; 65536)")
    mount.add_argument("--api-key-env", type=argtypes.not_empty, metavar="VAR",
                       help="catalog API key for .search from environment variable VAR (default: QUILT_API_KEY "
                            "if set, else the login shared with quilt3)")
    mount.add_argument("--package", type=argtypes.package_spec, metavar="NS/NAME[@HASH|:TAG]",
                       help="mount one package revision (latest by default) at the root, read-only; its draft "
                            "is MOUNT/.draft (unless --read-only)")
    mount.add_argument("--env-file", type=argtypes.not_empty, metavar="FILE",
                       help="load KEY=VALUE lines (# comments, optional 'export ', quotes stripped) into the "
                            "environment first, over what is set: credentials for mounts at boot (fstab, systemd)")
    mount.add_argument("--stop-timeout", type=argtypes.stop_timeout, default=60, metavar="SECONDS",
                       help="after SIGTERM, SIGINT or SIGHUP, how long pending uploads may still take before the "
                            "daemon exits, leaving the rest staged for the next mount (60; below systemd's "
                            "TimeoutStopSec, 90 by default)")
    mount.add_argument("--noexec", action="store_true", help="do not allow executing files of the mount "
                                                              "(mount(8)'s noexec; nosuid and nodev always apply)")
    mount.add_argument("--posix-metadata", action="store_true",
                       help="keep modes, owners, times, symlinks, special files and extended attributes in each "
                            "object's metadata, as s3fs-fuse does (costs a HEAD per object listed)")
    mount.set_defaults(handler=cmd_mount)

    umount = commands.add_parser("umount", help="unmount, waiting for the daemon to finish")
    umount.add_argument("mountpoint", metavar="MOUNTPOINT")
    umount.set_defaults(handler=cmd_umount)

    helper = commands.add_parser("install-mount-helper", help="link the mount.fuse.quiltmount helper where mount(8) "
                                                              "looks for it, for mount -t fuse.quiltmount and fstab")
    helper.add_argument("--dir", default="/sbin", help="where mount(8) looks for helpers (/sbin)")
    helper.add_argument("--remove", action="store_true", help="remove the link instead")
    helper.set_defaults(handler=cmd_install_mount_helper)

    packages = commands.add_parser("packages", help="list, inspect and delete Quilt packages")
    package_verbs = packages.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = package_verbs.add_parser("list", help="package names in a registry")
    listing.add_argument("registry", nargs="?", metavar="REGISTRY",
                         help="s3://BUCKET, file:///DIR or DIR (default: quilt3's default_local_registry)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=cmd_packages_list)
    versions = package_verbs.add_parser("versions", help="a package's pointers (timestamps and latest)")
    versions.add_argument("name", metavar="NAME")
    versions.add_argument("--registry", help="registry (default: quilt3's default_local_registry)")
    versions.add_argument("--json", action="store_true", help="machine-readable output")
    versions.set_defaults(handler=cmd_packages_versions)
    delete = package_verbs.add_parser("delete", help="delete a package, or one revision with --top-hash "
                                                     "(pointers only: manifests and data stay)")
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("--registry", help="registry (default: quilt3's default_local_registry)")
    delete.add_argument("--top-hash", metavar="HASH", help="full hash or a unique prefix of 6+ characters")
    delete.set_defaults(handler=cmd_packages_delete)
    index = package_verbs.add_parser("index", help="build a revision's on-disk index ahead of a mount")
    index.add_argument("spec", type=argtypes.package_spec, metavar="NAME[@HASH]",
                       help="package name, and a revision's hash or a unique prefix of 6+ characters "
                            "(default: latest)")
    index.add_argument("--registry", help="registry (default: quilt3's default_local_registry)")
    index.add_argument("--json", action="store_true", help="machine-readable output")
    index.set_defaults(handler=cmd_packages_index)
    draft = package_verbs.add_parser("draft", help="open a package draft in a mount (prints its path)")
    draft.add_argument("name", metavar="NS/NAME")
    draft.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT",
                       help="the mount (default: the only writable mount that can hold it)")
    draft.add_argument("--from", dest="from_revision", metavar="HASH|POINTER",
                       help="start from this revision (default: latest; in a package mount, the mounted one)")
    draft.set_defaults(handler=cmd_packages_draft)
    commit = package_verbs.add_parser("commit", help="publish a package draft of a mount as a new revision")
    commit.add_argument("path", metavar="DRAFT", help="MOUNT/.packages/NS/NAME/draft (MOUNT/.draft in a package "
                                                      "mount)")
    commit.add_argument("-m", "--message", help="the revision's message")
    commit.add_argument("--meta", type=argtypes.json_value, help="replace the package metadata (JSON)")
    commit.add_argument("--workflow", default=..., type=lambda value: None if value == "" else value,
                        help="workflow ID, or an empty string to skip workflow validation (as quilt3 push; "
                             "default: the registry's default workflow)")
    commit.add_argument("--force", action="store_true", help="move latest even if it changed since the draft's "
                                                              "parent")
    commit.add_argument("--dedupe", action="store_true", help="skip the commit if it equals latest")
    commit.add_argument("--json", action="store_true", help="machine-readable output")
    commit.set_defaults(handler=cmd_packages_commit)
    diff = package_verbs.add_parser("diff", help="what committing a package draft would change (A/M/D/R)")
    diff.add_argument("path", metavar="DRAFT", help="MOUNT/.packages/NS/NAME/draft (MOUNT/.draft in a package "
                                                    "mount)")
    diff.add_argument("--json", action="store_true", help="machine-readable output")
    diff.set_defaults(handler=cmd_packages_diff)

    status = commands.add_parser("status", help="show live mounts")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)

    prefetch = commands.add_parser("prefetch", help="fill the disk cache with files, directories or revisions of "
                                                    "mounts", description="Fetch every file under each PATH (a file, "
                                   "a directory, or a revision such as MOUNT/.packages/NS/NAME/latest/) of a live "
                                   "mount into the disk cache, in the mount's daemon, so that reading them later makes "
                                   "no request.  Symlinks inside directories are not followed.")
    prefetch.add_argument("paths", nargs="+", metavar="PATH")
    prefetch.add_argument("--json", action="store_true", help="print the summary as JSON")
    prefetch.set_defaults(handler=cmd_prefetch)

    cache = commands.add_parser("cache", help="the disk cache shared by the mounts: status, prune, verify, clear")
    cache_verbs = cache.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, handler, text in (
            ("status", cmd_cache_status, "what is cached, per source and kind, against the cap; live mounts using it"),
            ("prune", cmd_cache_prune, "remove least recently used blocks down to --to SIZE (default: the cap)"),
            ("verify", cmd_cache_verify, "check every cached block (and whole package files against their hash); "
                                         "remove what is damaged"),
            ("clear", cmd_cache_clear, "remove every cached block")):
        cache_verb = cache_verbs.add_parser(verb, help=text)
        cache_verb.add_argument("--disk-cache-dir", metavar="DIR",
                                help="the cache (default: $QUILTMOUNT_DISK_CACHE_DIR, else "
                                     "$XDG_CACHE_HOME/quiltmount/blocks)")
        if verb in ("status", "verify"):
            cache_verb.add_argument("--json", action="store_true", help="machine-readable output")
        if verb == "prune":
            cache_verb.add_argument("--to", type=argtypes.size, metavar="SIZE",
                                    help="bytes to keep at most (K/M/G/T suffixes; default: the cap)")
        cache_verb.set_defaults(handler=handler)

    from quiltmount.stackcli import add_stack_commands

    add_stack_commands(commands)
    return parser


def cmd_mount(args: argparse.Namespace) -> int:
    from quiltmount.daemon.launcher import MountOptions, start_background
    from quiltmount.storage import parse_source
    from quiltmount.storage.endpoint import environment_endpoint_url

    if args.env_file:  # into this process's environment, which the daemon inherits: never on its argv
        from quiltmount.envfile import load_env_file

        os.environ.update(load_env_file(args.env_file))
    source = parse_source(args.source)  # fail fast on a bad SOURCE, before any process is started
    if source.scheme == "s3" and args.endpoint_url is None:
        environment_endpoint_url()  # --endpoint-url was checked by argparse
    cache_dir = os.path.abspath(args.cache_dir) if args.cache_dir else None
    if cache_dir is not None:
        _check_directory_can_be("--cache-dir", cache_dir)
    options = MountOptions(
        source=_with_package(source, args.package), source_argument=args.source,
        mountpoint=os.path.abspath(args.mountpoint), read_only=args.read_only, as_of=args.as_of,
        cache_dir=cache_dir,
        disk_cache_size=args.disk_cache_size, disk_cache_dir=_cache_root(args),
        memory_cache_size=args.memory_cache_size,
        metadata_ttl=args.metadata_ttl, negative_metadata_ttl=args.negative_metadata_ttl,
        uid=args.uid, gid=args.gid, allow_other=args.allow_other,
        file_mode=args.file_mode, dir_mode=args.dir_mode,
        log_file=os.path.abspath(args.log_file) if args.log_file else None, log_level=args.log_level,
        profile=args.profile, region=args.region, endpoint_url=args.endpoint_url,
        sync_on_close=args.sync_on_close, upload_attempts=args.upload_attempts, search_limit=args.search_limit,
        kernel_cache_entries=args.kernel_cache_entries, api_key_env=args.api_key_env,
        quilt_credentials=args.quilt_credentials, s3_timeout=args.s3_timeout, noexec=args.noexec,
        stop_timeout=args.stop_timeout, posix_metadata=args.posix_metadata)
    if args.foreground:
        from quiltmount.daemon.entry import run_mount

        return run_mount(options)
    start_background(options)
    record = state.read_record(options.mountpoint) or {}
    print(f"mounted {source.url} at {options.mountpoint} (log: {record.get('log_file', '?')})")
    stranded = record.get("stranded", [])
    if stranded:
        print(stranded_warning(stranded), file=sys.stderr)
    cache = record.get("cache", {})
    if "disk_limit" in cache:
        print(f"disk cache: {format_size(cache['disk_used'])} of {format_size(cache['disk_limit'])} used "
              f"({cache['disk_dir']})")
    elif options.disk_cache_size == 0:
        print("disk cache: off (--disk-cache-size 0)")
    return 0


def _check_directory_can_be(option: str, path: str) -> None:
    """`path` is a directory or can be made one: nothing but directories at it and above it.  The daemon
    creates it, and would fail with an OSError (a traceback in --foreground)."""
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{option} {path}: {existing} is not a directory")


def _with_package(source: Source, package: str | None) -> Source:
    """SOURCE, mounting the package revision of --package if given (in the source URI or with --package,
    not both)."""
    if package is None:
        return source
    if source.package:
        raise UserError("give the package either in the source URI or with --package, not both")
    return dataclasses.replace(source, package=package)


def cmd_umount(args: argparse.Namespace) -> int:
    from quiltmount.mountpoint import is_fuse_mount, unmount

    path = os.path.abspath(args.mountpoint)
    record = state.read_record(path)
    if is_fuse_mount(path):
        unmount(path)
    elif record is None or not state.pid_alive(int(record.get("pid", 0))):
        # The daemon has exited by itself (a stop signal): what it left staged is in its report, once.
        report = state.take_report(path) or {}
        if not (report.get("failed_uploads") or report.get("still_open")):
            raise UserError(f"not mounted: {path}")
        return _list_left(f"{path} is not mounted (its daemon has exited)", report)
    if record is not None:
        report = _wait_for_daemon(path, int(record.get("pid", 0)), record.get("log_file"))
    else:
        report = state.take_report(path) or {}
    if report.get("failed_uploads") or report.get("still_open"):
        return _list_left(f"unmounted {path}", report)
    print(f"unmounted {path}")
    return 0


def _list_left(done: str, report: dict) -> int:
    """Print the files a daemon's exit `report` lists as not uploaded, then one line of error: `done` (what
    became of the mount) and what becomes of them; return the exit status (1)."""
    failed, still_open = report.get("failed_uploads", []), report.get("still_open", [])
    for item in failed + still_open:
        print(one_line(f"quiltmount: not uploaded: {item['key']} (kept at {item['staged']}): {item['error']}"),
              file=sys.stderr)
    fates = []
    if failed:
        fates.append(f"{len(failed)} file(s) are still staged: the next mount of the same source uploads them")
    if still_open:
        fates.append(f"{len(still_open)} file(s) were still open for writing: not uploaded (their bytes may be "
                     f"incomplete); the next mount of the same source moves them to {report['stranded_dir']}")
    print(f"quiltmount: error: {done}, but {'; '.join(fates)}", file=sys.stderr)
    return 1


def _wait_for_daemon(path: str, pid: int, log_file: str | None) -> dict:
    """Wait for the daemon to finish its uploads and exit, with a progress bar on a terminal; return the
    report it left (uploads that did not land)."""
    from tqdm import tqdm

    deadline = time.monotonic() + UMOUNT_WAIT
    progress = None
    try:
        while pid and state.pid_alive(pid) and time.monotonic() < deadline:
            pending = int((state.read_record(path) or {}).get("pending_uploads", 0))
            if pending and progress is None and sys.stderr.isatty():
                progress = tqdm(total=pending, desc="uploading", unit="file", file=sys.stderr)
            if progress is not None:
                progress.update(max(0, progress.total - pending - progress.n))
            state.wait_for_exit(pid, 0.1)
        if pid and state.pid_alive(pid):
            raise UserError(f"unmounted {path}, but daemon {pid} is still running (log: {log_file})")
        report = state.take_report(path) or {}
        if progress is not None:  # the daemon is gone: what it did not upload is in its report
            progress.update(max(0, progress.total - len(report.get("failed_uploads", [])) - progress.n))
        return report
    finally:
        if progress is not None:
            progress.close()


def cmd_install_mount_helper(args: argparse.Namespace) -> int:
    from quiltmount.helperlink import install_helper, remove_helper

    print(remove_helper(args.dir) if args.remove else install_helper(args.dir))
    return 0


def cmd_packages_list(args: argparse.Namespace) -> int:
    from quiltmount.api import list_packages

    names = list_packages(args.registry)
    if args.json:
        print(json.dumps(list(names)))
    else:
        for name in names:
            print(name)
    return 0


def cmd_packages_versions(args: argparse.Namespace) -> int:
    from quiltmount.api import list_package_versions

    with warnings.catch_warnings(record=True) as skipped:  # pointers that hold no top hash
        warnings.simplefilter("always")
        pairs = list(list_package_versions(args.name, args.registry))
    for warning in skipped:
        print(f"quiltmount: warning: {warning.message}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"pointer": pointer, "top_hash": top_hash} for pointer, top_hash in pairs]))
    else:
        for pointer, top_hash in pairs:
            print(f"{one_line(pointer):<12} {top_hash}")
    return 0


def cmd_packages_delete(args: argparse.Namespace) -> int:
    from quiltmount.api import delete_package

    delete_package(args.name, args.registry, top_hash=args.top_hash)
    print(f"deleted {args.name}" + (f" revision {args.top_hash}" if args.top_hash else ""))
    return 0


def cmd_packages_index(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from quiltmount.api import index_package

    name, _, top_hash = args.spec.partition("@")  # a bare '@' is refused by argtypes.package_spec
    progress = tqdm(desc="indexing", unit=" entries", file=sys.stderr) if sys.stderr.isatty() else None
    try:
        result = index_package(name, args.registry, top_hash=top_hash or None,
                               progress=None if progress is None else lambda entries, _: progress.update(
                                   entries - progress.n))
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{name}@{result['top_hash']}: {result['entries']} entries, index {result['path']} "
              f"({format_size(int(result['disk_bytes']))})")
    return 0


def cmd_packages_draft(args: argparse.Namespace) -> int:
    from quiltmount.draftctl import open_draft

    print(open_draft(args.name, args.mountpoint, from_revision=args.from_revision))
    return 0


def cmd_packages_commit(args: argparse.Namespace) -> int:
    from quiltmount.draftctl import commit_draft

    options = {} if args.meta is None else {"meta": args.meta}
    if args.workflow is not ...:
        options["workflow"] = args.workflow
    with CommitProgressBar() as bar:
        result = commit_draft(args.path, args.message, force=args.force, dedupe=args.dedupe,
                              progress=bar.update if sys.stderr.isatty() else None, **options)
    if args.json:
        print(json.dumps(result))
    elif result["pointer"] is None:
        print(f"{result['package']}@{result['top_hash'][:7]} is already latest: nothing committed (--dedupe)")
    else:
        print(f"{result['package']}@{result['top_hash'][:7]} committed as {result['pointer']}")
    return 0


class CommitProgressBar:
    """tqdm bars for a commit that runs in its daemon: the parent's entries while they are read (large
    parents), then the bytes of the new files as each one is uploaded."""

    def __init__(self) -> None:
        self._phase: str | None = None
        self._bar: tqdm | None = None

    def __enter__(self) -> CommitProgressBar:
        return self

    def __exit__(self, *_: object) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def update(self, report: dict[str, int | str]) -> None:
        from tqdm import tqdm

        phase = report.get("phase")
        if phase != self._phase:
            self._close()
            self._phase = phase
            if phase == "parent":
                self._bar = tqdm(desc="reading the parent", unit=" entries", file=sys.stderr)
            elif phase == "upload":
                self._bar = tqdm(desc="uploading", total=int(report["bytes_total"]), unit="B", unit_scale=True,
                                 unit_divisor=1024, file=sys.stderr)
        if self._bar is None:
            return
        done = int(report["parent_entries"] if phase == "parent" else report["bytes_done"])
        self._bar.update(done - self._bar.n)
        if phase == "upload":
            self._bar.set_postfix_str(f"{report['files_done']}/{report['files_total']} files", refresh=False)
        self._bar.refresh()


def cmd_packages_diff(args: argparse.Namespace) -> int:
    from quiltmount.draftctl import diff_draft

    changes = diff_draft(args.path)
    if args.json:
        print(json.dumps([{"change": change, "key": key} for change, key in changes]))
    else:
        for change, key in changes:
            print(one_line(f"{change}  {key}"))
    return 0


def cmd_prefetch(args: argparse.Namespace) -> int:
    from quiltmount import prefetchctl

    with prefetchctl.ProgressBar() as bar:
        summary = prefetchctl.prefetch(args.paths, progress=bar.update if sys.stderr.isatty() else None)
    if args.json:
        print(json.dumps(summary))
    else:
        print(prefetchctl.format_summary(summary))
    warning = prefetchctl.capacity_warning(summary)
    if warning:
        print(f"quiltmount: warning: {warning}", file=sys.stderr)
    for failure in summary["failures"]:
        print(one_line(f"quiltmount: error: {failure['path']}: {failure['error']}"), file=sys.stderr)
    if summary["errors"] > len(summary["failures"]):
        print(f"quiltmount: error: ... {summary['errors'] - len(summary['failures'])} more (the daemon's log has "
              "them all)", file=sys.stderr)
    return 1 if summary["errors"] else 0


def cmd_status(args: argparse.Namespace) -> int:
    records = state.live_records()
    if args.json:
        print(json.dumps({"mounts": records}, indent=2, sort_keys=True))
        return 0
    if not records:
        print("no quiltmount mounts")
        return 0
    for record in records:
        cache = record.get("cache", {})
        requests = record.get("requests", {})
        disk = (f"\n  disk:      {format_size(cache['disk_used'])} / {format_size(cache['disk_limit'])} (shared: "
                f"{cache['disk_dir']}), {cache['disk_hits']} hits, {cache['disk_misses']} misses"
                f"{'' if cache['disk_enabled'] else ', turned off (see the log)'}"
                if "disk_limit" in cache else "\n  disk:      off")
        print(f"{record['mountpoint']}\n"
              f"  source:    {record['source']}\n"
              f"  pid:       {record['pid']}\n"
              f"  log:       {record['log_file']}\n"
              f"  cache:     memory {format_size(cache.get('memory_used', 0))} / "
              f"{format_size(cache.get('memory_limit', 0))}, {cache.get('memory_hits', 0)} hits, "
              f"{cache.get('memory_misses', 0)} misses ({record.get('cache_dir')}){disk}\n"
              f"  requests:  {requests.get('in_flight', 0)} in flight; {_counts(requests.get('totals', {}))}\n"
              f"  kernel:    {sum(record.get('fuse_calls', {}).values())} calls; "
              f"{_counts(record.get('fuse_calls', {}))}\n"
              f"  open:      {record.get('open_files', 0)} files, RSS {format_size(record.get('rss_bytes', 0))}")
        print("\n".join(upload_lines(record)))
        for index in record.get("indexes", []):
            print(f"  index:     {index['top_hash'][:12]} {index['entries']} entries, "
                  f"{format_size(index['disk_bytes'])} ({index['path']})")
        for draft in record.get("drafts", []):
            print(f"  draft:     {draft['package']} from {(draft['parent'] or 'nothing')[:12]}: "
                  f"{draft['files_written']} written, {draft['deleted']} deleted, {draft['renamed']} renamed, "
                  f"{format_size(draft['bytes_staged'])} staged")
    return 0


def stranded_warning(stranded: list[dict[str, str]]) -> str:
    """What `mount` says of the files a stopped daemon left open for writing, which it set aside: one line."""
    places = [item["kept_at"] for item in stranded]
    where = f"at {places[0]}" if len(places) == 1 else f"under {os.path.commonpath(places)}"
    return one_line(f"quiltmount: warning: {len(stranded)} file(s) a stopped daemon left open for writing were "
                    f"not uploaded (their bytes may be incomplete); kept {where} (`quiltmount status` lists them)")


def upload_lines(record: dict[str, Any]) -> list[str]:
    """The uploads of a mount's status record, for `status`: the counts, then one line per failed upload and
    per file set aside after a crash, UPLOAD_LINES of each at most (`--json` has them all)."""
    failed, stranded = record.get("failed_uploads", []), record.get("stranded", [])
    return [f"  uploads:   {record.get('pending_uploads', 0)} pending, {record.get('uploaded', 0)} done, "
            f"{record.get('upload_retries', 0)} retries, {len(failed)} failed, {len(stranded)} stranded",
            *_capped("failed:  ", [f"{item['key']} (staged at {item['staged']}): {item['error']}" for item in failed]),
            *_capped("stranded:", [f"{item['key']}: not uploaded, kept at {item['kept_at']}" for item in stranded])]


def _capped(label: str, items: list[str]) -> list[str]:
    """`items` as status lines under `label`, UPLOAD_LINES at most, then how many more there are."""
    lines = [one_line(f"  {label}  {item}") for item in items[:UPLOAD_LINES]]
    if len(items) > UPLOAD_LINES:
        lines.append(f"  {label}  ... and {len(items) - UPLOAD_LINES} more (`quiltmount status --json` lists them all)")
    return lines


def _counts(counts: dict[str, int]) -> str:
    """`get 2, list 3`: counters as a person reads them, the largest first."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{name} {count}" for name, count in ordered) or "none"


def _cache_root(args: argparse.Namespace) -> str:
    return os.path.abspath(args.disk_cache_dir or disk_cache_dir())


def cmd_cache_status(args: argparse.Namespace) -> int:
    from quiltmount import cachectl

    report = cachectl.status(_cache_root(args))
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else cachectl.format_status(report))
    return 0


def cmd_cache_prune(args: argparse.Namespace) -> int:
    from quiltmount import cachectl

    root = _cache_root(args)
    print(cachectl.format_prune(cachectl.prune(root, args.to), root))
    return 0


def cmd_cache_verify(args: argparse.Namespace) -> int:
    from quiltmount import cachectl

    root = _cache_root(args)
    bar = None
    if sys.stderr.isatty() and cachectl.exists(root):
        from tqdm import tqdm

        bar = tqdm(desc="verifying", unit=" blocks", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        report = cachectl.verify(root, None if bar is None else progress)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(report if report is not None else {"dir": root, "exists": False}, indent=2,
                         sort_keys=True))
    else:
        print(cachectl.format_verify(report, root))
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    from quiltmount import cachectl

    root = _cache_root(args)
    print(cachectl.format_clear(cachectl.clear(root), root))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            if sys.stdout is not None:  # None: started with stdout closed
                sys.stdout.flush()  # what is still buffered: a reader gone shows here, not in warnings at exit
    except BrokenPipeError as exc:
        if not _stdout_reader_gone():
            print(f"quiltmount: error: {exc}", file=sys.stderr)
            return 1
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the flush at exit succeeds
        return EXIT_BROKEN_PIPE


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe or socket whose reader went away (`quiltmount status | head -1`), rather
    than some other pipe breaking."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except BrokenPipeError:
        raise  # main's to judge: stdout's reader may be gone
    except (QuiltmountError, OSError) as exc:  # OSError: e.g. a --log-file or --cache-dir under a file
        print(one_line(f"quiltmount: error: {exc}"), file=sys.stderr)  # a key or a catalog's message may hold \n
        return 1
    except KeyboardInterrupt:
        print("quiltmount: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""`mount.fuse.quiltmount`: the helper mount(8) runs for `mount -t fuse.quiltmount` and fstab lines of that
type (`quiltmount install-mount-helper` puts it where mount(8) looks for it: `helperlink`).

mount(8) runs `/sbin/mount.fuse.quiltmount SOURCE MOUNTPOINT [-sfnv] [-N NAMESPACE] [-o OPTIONS] [-t TYPE]`
(util-linux, "EXTERNAL HELPERS") with PATH and HOME removed from the environment.  The helper mounts in its
own process, as `quiltmount mount` does, and nothing is looked up in PATH: its interpreter is the absolute
one of its script's first line, the daemon is started with that same interpreter, and fusermount3 is also
looked for where fuse3 installs it.

OPTIONS, comma-separated (a value may be in double quotes to hold a comma):
- every option of `quiltmount mount` by its long name, as `name=value`, or bare for a flag
  (`metadata-ttl=30,read-only`); `_` may stand for `-` (`allow_other`);
- `ro` is `read-only`; `noexec` applies (mount(8) adds it for `user` and `users`);
- ignored: what mount(8) and systemd act on themselves or what is always so for quiltmount (`rw`,
  `defaults`, `auto`, `noauto`, `user`, `users`, `nouser`, `owner`, `group`, `_netdev`, `nofail`,
  `x-*`, `X-*`, `comment=*`); `nosuid` and `nodev` (always in force: `suid` and `dev` are ignored too);
  `exec` (the default); the atime and sync families (quiltmount keeps no atime; see `sync-on-close`);
  `default_permissions` (always on).

Exit status as mount(8) expects of a helper: 0 mounted; 1 a bad invocation (unknown option, bad value); 8
interrupted; 32 the mount failed.  `-f` prints the `quiltmount mount` command and stops there, `-v` prints it and the mount's
own lines, `-n` is ignored, `-s` ignores unknown options (named on stderr) instead of failing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from quiltmount.errors import QuiltmountError
from quiltmount.helperlink import HELPER_NAME

TYPES = ("fuse.quiltmount", "quiltmount")
EXIT_USAGE = 1  # mount(8): incorrect invocation or permissions
EXIT_INTERRUPTED = 8  # mount(8): user interrupt
EXIT_FAILURE = 32  # mount(8): mount failure

IGNORED = frozenset({
    "rw", "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group", "_netdev", "nofail",
    "nosuid", "suid", "nodev", "dev", "exec", "default_permissions",
    "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime",
    "lazytime", "nolazytime", "sync", "async", "dirsync",
})
IGNORED_PREFIXES = ("x-", "X-", "comment=")
ALIASES = {"ro": "read-only"}
#: Options of `quiltmount mount` that a helper cannot honour, and why.
REFUSED = {
    "foreground": "a mount helper returns once mounted; for a daemon that stays attached, run "
                  "'quiltmount mount --foreground' in a systemd service",
    "remount": "remounting is not supported: unmount and mount again",
}


class HelperError(Exception):
    """A bad invocation: one line on stderr, exit status 1."""


@dataclass
class Invocation:
    """What the helper was asked to do."""

    args: argparse.Namespace  # `quiltmount mount`'s, parsed by the command's own parser
    argv: list[str]  # the same as a command line, from "mount" on
    fake: bool = False
    verbose: bool = False
    ignored: tuple[str, ...] = ()  # unknown options dropped under -s


def _raise_usage(message: str) -> None:
    raise HelperError(message)


def _helper_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=HELPER_NAME, add_help=False)
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("-s", dest="sloppy", action="store_true")
    parser.add_argument("-f", dest="fake", action="store_true")
    parser.add_argument("-n", dest="no_mtab", action="store_true")
    parser.add_argument("-v", dest="verbose", action="store_true")
    parser.add_argument("-o", dest="options", action="append", default=[])
    parser.add_argument("-t", dest="type")
    parser.add_argument("-N", dest="namespace")
    parser.error = _raise_usage  # type: ignore[method-assign]
    return parser


def command_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The `quiltmount` parser, and its `mount` subparser, both failing with `HelperError`."""
    from quiltmount.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    mount = commands.choices["mount"]
    for each in (parser, mount):
        each.error = _raise_usage  # type: ignore[method-assign]
    return parser, mount


def split_options(text: str) -> list[str]:
    """mount(8)'s comma-separated list; double quotes keep commas inside a value (and are dropped)."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise HelperError("unbalanced double quote in the mount options")
    items.append("".join(current))
    return [item for item in items if item]


def long_options(mount: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """The long names of `quiltmount mount`'s options: flags, and options taking a value."""
    flags: set[str] = set()
    valued: set[str] = set()
    for action in mount._actions:
        for spelling in action.option_strings:
            if spelling.startswith("--") and spelling != "--help":
                (flags if action.nargs == 0 else valued).add(spelling[2:])
    return flags, valued


def translate(source: str, mountpoint: str, options: Sequence[str], known: tuple[set[str], set[str]], *,
              sloppy: bool = False) -> tuple[list[str], list[str]]:
    """`quiltmount mount`'s argv for mount(8)'s SOURCE, MOUNTPOINT and -o OPTIONS given the `known` long
    options (flags, valued), and the unknown options dropped (`sloppy`; else one raises `HelperError`)."""
    flags, valued = known
    argv = ["mount", source, mountpoint]
    dropped: list[str] = []
    for item in split_options(",".join(options)):
        raw, equals, value = item.partition("=")
        if raw in IGNORED or item.startswith(IGNORED_PREFIXES):
            continue
        name = ALIASES.get(raw, raw).replace("_", "-")
        if name in REFUSED:
            raise HelperError(f"option {raw}: {REFUSED[name]}")
        if name in flags:
            if equals:
                raise HelperError(f"option {raw} takes no value")
            argv.append(f"--{name}")
        elif name in valued:
            if not equals:
                raise HelperError(f"option {raw} needs a value: {raw}=VALUE")
            argv.append(f"--{name}={value}")
        elif sloppy:
            dropped.append(item)
        else:
            raise HelperError(f"unknown mount option: {raw}")
    return argv, dropped


def parse_invocation(argv: Sequence[str]) -> Invocation:
    """The helper's command line, checked and translated; `HelperError` for anything wrong."""
    helper = _helper_parser().parse_args(list(argv))
    if helper.type is not None and helper.type not in TYPES:
        raise HelperError(f"not a quiltmount file system type: {helper.type} (expected fuse.quiltmount)")
    if helper.namespace is not None:
        raise HelperError("-N (mounting in another namespace) is not supported")
    parser, mount = command_parsers()
    command, dropped = translate(helper.source, helper.mountpoint, helper.options, long_options(mount),
                                 sloppy=helper.sloppy)
    args = parser.parse_args(command)
    return Invocation(args, command, fake=helper.fake, verbose=helper.verbose, ignored=tuple(dropped))


def run(argv: Sequence[str]) -> int:
    """The helper: returns its exit status; errors are one line on stderr."""
    try:
        invocation = parse_invocation(argv)
    except HelperError as exc:
        print(f"{HELPER_NAME}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for item in invocation.ignored:
        print(f"{HELPER_NAME}: ignoring unknown mount option: {item}", file=sys.stderr)
    if invocation.fake or invocation.verbose:
        print(shlex.join(["quiltmount", *invocation.argv]))
    if invocation.fake:
        return 0
    output = sys.stdout if invocation.verbose else io.StringIO()  # a helper is silent when all goes well
    try:
        with contextlib.redirect_stdout(output):
            status = invocation.args.handler(invocation.args)
    except (QuiltmountError, OSError) as exc:
        print(f"{HELPER_NAME}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{HELPER_NAME}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status == 0 else EXIT_FAILURE


def main() -> int:
    return run(sys.argv[1:])

"""`quiltmount` verbs for the Quilt stack: config, login/logout/whoami, api-keys, search, bucket.

`add_stack_commands(subparsers)` adds them to the CLI's subparsers.  Handlers return an exit status and
raise `UserError`/`QuiltmountError` for one-line errors.  An API key is taken only from the environment
(`QUILT_API_KEY`, or the variable named by `--api-key-env`), never from argv or a file.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Callable
from typing import Any

from quiltmount import argtypes
from quiltmount.errors import QuiltmountError, UserError
from quiltmount.names import one_line



def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    if not key.strip():
        raise argparse.ArgumentTypeError(f"empty key in {text!r}")
    return key.strip(), value


def _friendly(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the library's non-quiltmount exceptions into one-line `UserError`s."""

    @functools.wraps(handler)
    def wrapper(args: argparse.Namespace) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        from quiltmount.api_keys import APIKeyError

        try:
            return handler(args)
        except (QuiltmountError, BrokenPipeError):  # BrokenPipeError: cli.main's (stdout's reader may be gone)
            raise
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise UserError(f"not found: {getattr(args, 'key', '') or exc}") from None
            raise UserError(f"S3: {error.get('Message') or code or exc}") from None
        except BotoCoreError as exc:
            raise UserError(f"S3: {exc}") from None
        except APIKeyError as exc:
            errors = getattr(exc.result, "errors", None)
            if errors:
                raise UserError("; ".join(f"{e.path}: {e.message}" if e.path else e.message
                                          for e in errors)) from None
            raise UserError(str(exc)) from None
        except (ValueError, OSError) as exc:
            raise UserError(str(exc)) from None

    return wrapper


def _use_api_key(args: argparse.Namespace) -> None:
    from quiltmount.auth import login_with_api_key_from_env

    try:
        login_with_api_key_from_env(getattr(args, "api_key_env", None))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _api_key_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key-env", metavar="VAR",
                        help="take the catalog API key from environment variable VAR (default: QUILT_API_KEY)")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def add_stack_commands(commands: argparse._SubParsersAction) -> None:
    config = commands.add_parser("config", help="show or set quilt3's configuration (shared with quilt3)",
                                 description="Without arguments print the catalog URL; with URL autoconfigure "
                                             "from URL/config.json (\"\" resets to defaults); with --set set "
                                             "values.")
    url_or_values = config.add_mutually_exclusive_group()
    url_or_values.add_argument("url", nargs="?", metavar="URL")
    url_or_values.add_argument("--set", nargs="+", type=_key_value, metavar="KEY=VALUE", dest="values",
                               help="set config values (stored as strings)")
    config.add_argument("--json", action="store_true", help="print the whole configuration as JSON")
    config.set_defaults(handler=cmd_config)

    login = commands.add_parser("login", help="log in to the configured Quilt catalog (shared with quilt3)")
    login.set_defaults(handler=cmd_login)
    logout = commands.add_parser("logout", help="forget Quilt catalog credentials (shared with quilt3)")
    logout.set_defaults(handler=cmd_logout)
    whoami = commands.add_parser("whoami", help="show the configured catalog and how requests authenticate")
    whoami.add_argument("--json", action="store_true", help="machine-readable output")
    _api_key_option(whoami)
    whoami.set_defaults(handler=cmd_whoami)

    keys = commands.add_parser("api-keys", help="manage your catalog API keys")
    verbs = keys.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="your API keys")
    listing.add_argument("--name")
    listing.add_argument("--fingerprint")
    listing.add_argument("--status", choices=["ACTIVE", "EXPIRED"], type=str.upper)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=cmd_api_keys_list)
    get = verbs.add_parser("get", help="one API key")
    get.add_argument("id", metavar="ID")
    get.add_argument("--json", action="store_true", help="machine-readable output")
    get.set_defaults(handler=cmd_api_keys_get)
    create = verbs.add_parser("create", help="create an API key (the secret is printed once)")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--expires-in-days", type=argtypes.positive, default=90, metavar="N", help="1-365 (90)")
    create.add_argument("--json", action="store_true", help="machine-readable output")
    create.set_defaults(handler=cmd_api_keys_create)
    revoke = verbs.add_parser("revoke", help="revoke an API key")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--id")
    which.add_argument("--secret", help="the key's secret (prefer --secret-env: argv is visible to others)")
    which.add_argument("--secret-env", metavar="VAR", help="take the secret from environment variable VAR")
    revoke.set_defaults(handler=cmd_api_keys_revoke)
    for sub in (listing, get, create, revoke):
        _api_key_option(sub)

    search = commands.add_parser("search", help="search the catalog")
    search.add_argument("query", metavar="QUERY", help="query string, or a JSON object for the DSL")
    search.add_argument("--bucket", metavar="BUCKET", help="search one bucket (and its packages)")
    search.add_argument("--limit", type=argtypes.positive, default=10, metavar="N", help="maximum hits (10)")
    search.add_argument("--json", action="store_true", help="print the raw hits as JSON")
    _api_key_option(search)
    search.set_defaults(handler=cmd_search)

    bucket = commands.add_parser("bucket", help="copy to, from and within an S3 bucket like quilt3.Bucket")
    bverbs = bucket.add_subparsers(dest="verb", required=True, metavar="VERB")
    ls = bverbs.add_parser("ls", help="list keys")
    ls.add_argument("bucket", metavar="s3://BUCKET")
    ls.add_argument("prefix", nargs="?", default="", metavar="PREFIX")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(handler=cmd_bucket_ls)
    fetch = bverbs.add_parser("fetch", help="download KEY (or every key under KEY/) to PATH")
    fetch.add_argument("bucket", metavar="s3://BUCKET")
    fetch.add_argument("key", metavar="KEY")
    fetch.add_argument("path", metavar="PATH")
    fetch.set_defaults(handler=cmd_bucket_fetch)
    put = bverbs.add_parser("put", help="upload a file to KEY, or a directory under the prefix KEY")
    put.add_argument("bucket", metavar="s3://BUCKET")
    put.add_argument("key", metavar="KEY")
    put.add_argument("path", metavar="PATH")
    put.set_defaults(handler=cmd_bucket_put)
    rm = bverbs.add_parser("rm", help="delete KEY, or with -r everything under the prefix KEY/")
    rm.add_argument("bucket", metavar="s3://BUCKET")
    rm.add_argument("key", metavar="KEY")
    rm.add_argument("-r", "--recursive", action="store_true", help="KEY is a prefix ending in / (or \"\")")
    rm.set_defaults(handler=cmd_bucket_rm)

    for parser in (config, login, logout, whoami, listing, get, create, revoke, search, ls, fetch, put, rm):
        parser.set_defaults(handler=_friendly(parser.get_default("handler")))


# -- handlers -----------------------------------------------------------------------------------------------

def cmd_config(args: argparse.Namespace) -> int:
    from quiltmount.quiltconfig import config

    if args.values:
        result = config(**dict(args.values))
    elif args.url is not None:
        result = config(args.url)
    else:
        result = config()
    if args.json:
        _print_json(dict(result))
    elif args.url is not None or args.values:
        print(f"configured {result.get('navigator_url') or '<None>'}")
    else:
        print(result.get("navigator_url") or "<None>")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    from quiltmount.auth import logged_in, login

    login()
    print(f"logged in to {logged_in() or '<None>'}")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from quiltmount.auth import logout

    logout()
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    from quiltmount import auth
    from quiltmount.quiltconfig import get_from_config

    _use_api_key(args)
    registry = get_from_config("registryUrl")
    entry = auth.load_auth().get(registry) if registry else None
    credentials = auth.load_credentials()
    method = "api-key" if auth._api_key is not None else ("login" if entry else None)
    info = {"catalog": get_from_config("navigator_url"), "registry": registry, "auth": method,
            "access_token_expires_at": entry.get("expires_at") if isinstance(entry, dict) else None,
            "aws_credentials_expire": credentials.get("expiry_time") if credentials else None}
    if args.json:
        _print_json(info)
        return 0
    print(f"catalog:     {info['catalog'] or '<None>'}")
    print(f"registry:    {registry or '<None>'}")
    print(f"auth:        {method or 'not logged in'}")
    if info["aws_credentials_expire"]:
        print(f"AWS credentials from the catalog, expiring {info['aws_credentials_expire']}")
    return 0


def _key_row(key: Any) -> str:
    return one_line(f"{key.id}  {key.name}  {key.fingerprint}  {key.status}  "
                    f"expires {key.expires_at.isoformat()}  last used "
                    f"{key.last_used_at.isoformat() if key.last_used_at else 'never'}")


def cmd_api_keys_list(args: argparse.Namespace) -> int:
    from quiltmount import api_keys

    _use_api_key(args)
    keys = api_keys.list(name=args.name, fingerprint=args.fingerprint, status=args.status)
    if args.json:
        _print_json([k.to_json() for k in keys])
    else:
        for key in keys:
            print(_key_row(key))
    return 0


def cmd_api_keys_get(args: argparse.Namespace) -> int:
    from quiltmount import api_keys

    _use_api_key(args)
    key = api_keys.get(args.id)
    if key is None:
        raise UserError(f"no API key with id {args.id}")
    if args.json:
        _print_json(key.to_json())
    else:
        print(_key_row(key))
    return 0


def cmd_api_keys_create(args: argparse.Namespace) -> int:
    from quiltmount import api_keys

    _use_api_key(args)
    key, secret = api_keys.create(args.name, expires_in_days=args.expires_in_days)
    if args.json:
        _print_json({"api_key": key.to_json(), "secret": secret})
    else:
        print(_key_row(key))
        print(f"secret (shown only once): {secret}")
    return 0


def cmd_api_keys_revoke(args: argparse.Namespace) -> int:
    from quiltmount import api_keys

    _use_api_key(args)
    secret = args.secret
    if args.secret_env:
        secret = os.environ.get(args.secret_env)
        if not secret:
            raise UserError(f"--secret-env {args.secret_env}: the environment variable is not set")
    api_keys.revoke(id=args.id, secret=secret)
    print("revoked")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from quiltmount.bucket import Bucket
    from quiltmount.catalog_search import search

    _use_api_key(args)
    query: Any = args.query
    if query.lstrip().startswith("{"):
        try:
            query = json.loads(query)
        except ValueError as exc:
            raise UserError(f"QUERY looks like JSON but is not valid: {exc}") from None
    if args.bucket:
        name = args.bucket if args.bucket.startswith("s3://") else f"s3://{args.bucket}"
        hits = Bucket(name).search(query, limit=args.limit)
    else:
        hits = search(query, limit=args.limit)
    if args.json:
        _print_json(hits)
        return 0
    for hit in hits:
        print(_hit_line(hit))
    return 0


def _hit_line(hit: dict[str, Any]) -> str:
    """A search hit as one line: the object's URI, the package's pointer, or the index and id.  The catalog's
    values are printed whatever their type (quilt3 returns hits as they come), line breaks escaped."""
    source = hit.get("_source", {})
    index = str(hit.get("_index") or "")
    if "key" in source:
        line = f"s3://{index}/{source['key']}"
    elif "ptr_name" in source:
        line = f"{index.removesuffix('_packages')}: {source['ptr_name']}:{source.get('ptr_tag')}"
    else:
        line = f"{index}: {hit.get('_id')}"
    return one_line(line)


def cmd_bucket_ls(args: argparse.Namespace) -> int:
    from quiltmount.bucket import Bucket

    items = Bucket(args.bucket)._list(args.prefix)
    if args.json:
        _print_json([{"key": i["Key"], "size": i.get("Size"),
                      "last_modified": i["LastModified"].isoformat() if i.get("LastModified") else None}
                     for i in items])
    else:
        for item in items:
            print(one_line(f"{item.get('Size', 0):>12}  {item['Key']}"))
    return 0


def cmd_bucket_fetch(args: argparse.Namespace) -> int:
    from quiltmount.bucket import Bucket

    Bucket(args.bucket).fetch(args.key, args.path)
    return 0


def cmd_bucket_put(args: argparse.Namespace) -> int:
    from quiltmount.bucket import Bucket

    bucket = Bucket(args.bucket)
    if os.path.isdir(args.path):
        bucket.put_dir(args.key, args.path)
    else:
        bucket.put_file(args.key, args.path)
    return 0


def cmd_bucket_rm(args: argparse.Namespace) -> int:
    from quiltmount.bucket import Bucket

    bucket = Bucket(args.bucket)
    if args.recursive:
        bucket.delete_dir(args.key)
    else:
        bucket.delete(args.key)
    return 0


__all__ = ["add_stack_commands"]

"""quiltmount: S3 buckets, local directories and Quilt data packages as plain directories.

The quilt3-compatible API (`quiltmount.api`) is re-exported here and imported on first use, so that the
`quiltmount` command does not load boto3, requests and the catalog client for verbs that need none of them
(`umount` and `status` start in a fraction of the time).
"""

from __future__ import annotations

from typing import Any

from quiltmount.version import __version__

__all__ = ["__version__", "Bucket", "QuiltException", "api_keys", "clear_api_key", "commit_draft", "config",
           "delete_package", "diff_draft", "get_boto3_session", "index_package", "list_package_versions",
           "list_packages", "logged_in", "login", "login_with_api_key", "logout", "open_draft", "prefetch",
           "search"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from quiltmount import api

        return getattr(api, name)
    raise AttributeError(f"module 'quiltmount' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

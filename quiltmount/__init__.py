"""quiltmount: S3 buckets, local directories and Quilt data packages as plain directories."""

__version__ = "0.1.0"

from quiltmount.api import (  # noqa: E402
    Bucket, QuiltException, api_keys, clear_api_key, config, delete_package, get_boto3_session, list_package_versions,
    list_packages, logged_in, login, login_with_api_key, logout, search,
)

__all__ = ["__version__", "Bucket", "QuiltException", "api_keys", "clear_api_key", "config", "delete_package",
           "get_boto3_session", "list_package_versions", "list_packages", "logged_in", "login", "login_with_api_key",
           "logout", "search"]

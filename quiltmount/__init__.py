"""quiltmount: S3 buckets, local directories and Quilt data packages as plain directories."""

__version__ = "0.1.0"

from quiltmount.api import delete_package, list_package_versions, list_packages  # noqa: E402

__all__ = ["__version__", "delete_package", "list_package_versions", "list_packages"]

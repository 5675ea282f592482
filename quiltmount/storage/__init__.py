"""Storage backends: where object bytes and listings come from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from quiltmount.errors import UserError
from quiltmount.names import split_package_spec
from quiltmount.storage.base import ListPage, ObjectInfo, ObjectStore

__all__ = ["ListPage", "ObjectInfo", "ObjectStore", "Source", "parse_source"]


@dataclass(frozen=True)
class Source:
    """A parsed mount source: `s3://bucket[/prefix/]`, `file:///abs/dir` or a plain directory path."""

    scheme: str  # "s3" or "file"
    location: str  # bucket name, or absolute directory path
    prefix: str = ""  # key prefix inside the bucket, '' or ending in '/'
    package: str | None = None  # `ns/name[@hash|:tag]` to mount one package revision

    @property
    def url(self) -> str:
        base = f"s3://{self.location}/{self.prefix}" if self.scheme == "s3" else f"file://{self.location}"
        return base + (f"#package={self.package}" if self.package else "")

    @property
    def package_name(self) -> str | None:
        """`ns/name` of the mounted package (without its revision), or None."""
        return self.package.partition("@")[0].partition(":")[0] if self.package else None

    @property
    def registry_url(self) -> str:
        """The registry at the root of the bucket or directory (packages live under its `.quilt/`)."""
        return f"s3://{self.location}" if self.scheme == "s3" else f"file://{self.location}"


def parse_source(text: str) -> Source:
    """Parse a SOURCE argument; raise `UserError` with a one-line reason if it is not one."""
    if text.startswith("quilt+s3://"):
        bucket, _, fragment = text[len("quilt+s3://"):].partition("#")
        fields = dict(item.partition("=")[::2] for item in fragment.split("&") if item)
        if fields.get("path"):  # (the catalog's "copy URI" of a file or directory inside a package)
            raise UserError(f"invalid source {text!r}: path= (a file or directory inside the package) cannot be "
                            f"mounted: mount the package and open {fields['path']} in it")
        # catalog= names the catalog that showed the URI: nothing to mount.
        if not bucket or "/" in bucket.strip("/") or not fields.get("package") or set(fields) - {"package", "catalog"}:
            raise UserError(f"invalid source {text!r}: expected quilt+s3://BUCKET#package=NS/NAME[@HASH|:TAG]"
                            "[&catalog=HOST]")
        try:
            split_package_spec(fields["package"])
        except ValueError as exc:
            raise UserError(f"invalid source {text!r}: {exc}") from None
        return Source("s3", bucket.strip("/"), package=fields["package"])
    if text.startswith("s3://"):
        parsed = urlparse(text)
        bucket = parsed.netloc
        if not bucket:
            raise UserError(f"invalid source {text!r}: expected s3://BUCKET or s3://BUCKET/PREFIX/")
        prefix = parsed.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return Source("s3", bucket, prefix)
    if text.startswith("file://"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise UserError(f"invalid source {text!r}: file:// URLs must be absolute (file:///dir)")
        path = unquote(parsed.path)
    elif "://" in text:
        raise UserError(f"unsupported source {text!r}: use s3://BUCKET[/PREFIX/], file:///DIR or a directory path")
    else:
        path = text
    if not path:  # os.path.abspath("") is the current directory: an unset variable must not mount it
        raise UserError(f"invalid source {text!r}: expected s3://BUCKET[/PREFIX/], file:///DIR or a directory path")
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise UserError(f"source directory does not exist: {path}")
    return Source("file", path)

"""quiltmount: S3 buckets, local directories and Quilt data packages as plain directories."""

__version__ = "0.1.0"

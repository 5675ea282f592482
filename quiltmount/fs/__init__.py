"""The filesystem layers below the FUSE adapter: path tree, block cache, read-ahead."""

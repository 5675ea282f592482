"""Quilt data packages: the manifest format and registries (layout v1), without any FUSE dependency."""

from __future__ import annotations

from quiltmount.packages.manifest import (
    CRC64NVME, SHA256, SHA2_256_CHUNKED, Entry, EntryHasher, Manifest, ManifestError, PhysicalKey,
    PhysicalKeyError, compute_top_hash, format_physical_key, hash_bytes, make_hasher, parse_manifest,
    parse_physical_key, tree_order, write_manifest,
)
from quiltmount.packages.registry import (
    LATEST, InvalidPointer, Registry, RegistryError, registry_from_url, validate_package_name,
)

__all__ = [
    "CRC64NVME", "LATEST", "SHA256", "SHA2_256_CHUNKED", "Entry", "EntryHasher", "InvalidPointer", "Manifest",
    "ManifestError", "PhysicalKey", "PhysicalKeyError", "Registry", "RegistryError", "compute_top_hash",
    "format_physical_key", "hash_bytes", "make_hasher", "parse_manifest", "parse_physical_key",
    "registry_from_url", "tree_order", "validate_package_name", "write_manifest",
]

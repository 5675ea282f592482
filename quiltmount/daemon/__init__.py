"""The mount daemon, one process per mount.

`launcher` starts it (`python -m quiltmount.daemon OPTIONS-JSON READY-FD`) and waits on its ready pipe;
`entry` sets up the process (`process`: logging, malloc) and runs `serve`: checks, stores, the trees
(`layers`), what comes from the catalog (`stack`), the FUSE loop and the status record (`status`).
Importing it loads no FUSE library and none of the quilt3-compatible API.
"""

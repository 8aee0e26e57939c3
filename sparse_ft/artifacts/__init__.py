"""What runs leave behind and the commands that read it: the sparse-delta codec every writer and
reader of that format uses (`sparse_delta`), rebuilding full weights from a sparse delta
(`apply_delta`), replaying sparse checkpoints (`sparse_checkpoints`) and decompressing or
describing the residual artifacts of `job=compress` (`ere`). Importing this package loads none of
them."""

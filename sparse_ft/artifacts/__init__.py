"""What runs leave behind and the commands that read it: rebuilding full weights from a sparse
delta (`apply_delta`), replaying sparse checkpoints (`sparse_checkpoints`) and decompressing or
describing the residual artifacts of `job=compress` (`ere`)."""

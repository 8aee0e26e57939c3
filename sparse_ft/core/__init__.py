"""The bottom layer: error types, typed option schemas, file writes (`io`) and parameter/storage
accounting. Nothing here imports upward."""

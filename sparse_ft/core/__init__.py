"""The bottom layer: error types and typed option schemas. Nothing here imports upward."""

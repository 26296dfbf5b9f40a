"""Data sources -> decoded uint8 cache -> device-resident tensors."""

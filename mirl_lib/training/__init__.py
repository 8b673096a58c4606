"""Floor 4: training one point: the loop (AdamW, warmup + cosine, exact resume, DDP), the loss and
the launch over torchrun ranks."""

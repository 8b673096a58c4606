"""Floor 5: the study: the strategy registry, the run folder (Study), the stage graph and its
scheduler, the run lock, and one point's training as a torchrun rank."""

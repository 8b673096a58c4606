"""Floor 1: what goes to and comes from disk: atomic writers, safe tensor loading, images, sparse
tickets, and the one place for the run folder's layout and file names (paths)."""

"""Floor 7: the before/after viewer of a finished run (ipywidgets)."""

"""Floor 0, the ground: errors, the shared names, the typed config and its YAML reader, the
evaluation protocol, the torch device and child processes. Only device imports torch."""

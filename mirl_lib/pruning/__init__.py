"""Floor 3: pruning: masks, the mask rules (magnitude, one-shot, random), the plan of kept counts
per round, and layer collapse."""

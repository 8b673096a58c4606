"""Floor 2: the network: PromptIR as published, its narrowed variants (sizing) and checkpoints."""

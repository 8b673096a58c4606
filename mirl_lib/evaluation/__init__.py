"""Floor 4: scoring a network with the study's protocol, tiled restoration and the paper's table."""

"""Floor 9: the command line, python -m mirl_lib COMMAND."""

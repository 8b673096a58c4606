"""``python -m mirl_lib COMMAND``: see ``mirl_lib.cli.main``."""
import sys

from mirl_lib.cli.main import main

if __name__ == "__main__":
    sys.exit(main())

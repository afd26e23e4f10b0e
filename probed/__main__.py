"""`python3 -m probed`: run the command line from the package (the single file has its own).

Only an entry point: nothing here is bundled into probed.py, so it must define nothing else.
"""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

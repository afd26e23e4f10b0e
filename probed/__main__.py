"""`python3 -m probed` and the `probed` console script: the command line from the package.

Not bundled into probed.py. Besides the entry point it adds the package-only subcommands: the
vLLM simulator and the demo built on it stay out of the single file to keep it small.
"""

from .cli import SUBCOMMANDS, main
from .sim.cli import sim_main
from .sim.demo import demo_main


def entry() -> int:
    """Run the command line with the package-only subcommands available."""
    return main(subcommands=dict(SUBCOMMANDS, demo=demo_main, sim=sim_main))


if __name__ == "__main__":
    raise SystemExit(entry())

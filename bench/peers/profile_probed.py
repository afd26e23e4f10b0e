"""probed under cProfile for bench/run.py, profiling only a window the bench chooses.

SIGUSR1 starts the profiler, SIGUSR2 stops it and writes OUT, so start-up (imports, regex
compiles, argument parsing) stays out of the numbers. Everything else is `probed`'s own main().

Usage: python3 profile_probed.py REPO OUT [probed flags...]
"""

import cProfile
import signal
import sys

if __name__ == "__main__":
    repo, out, flags = sys.argv[1], sys.argv[2], sys.argv[3:]
    sys.path.insert(0, repo)
    from probed.cli import main  # noqa: E402 (the repo is on the path only now)

    profiler = cProfile.Profile()

    def _start(*_args: object) -> None:
        profiler.enable()

    def _stop(*_args: object) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
    sys.exit(main(flags))

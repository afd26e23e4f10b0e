"""The vLLM simulator and the guided demo built on it: tools for newcomers and tests.

They run from the package (`python3 -m probed demo`, `python3 -m probed sim`) and are never in
the single file: the simulator is not the product, only a faithful stand-in for vLLM in the
states a probe must tell apart (matched to a real vLLM 0.32, tests/fixtures/real-servers).
"""

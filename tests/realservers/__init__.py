"""Real vLLM and real llama-server on loopback, for scenario tests (see test_vllm.py,
test_llamacpp.py) and for bench/polling_cost.py.

peers.py finds the built servers, gguf_model.py and hf_model.py write random-weight test models
offline, procs.py signals processes by PID and measures CPU and the control thread's own
lateness, servers.py starts, signals, restarts and stops one server, timeline.py records what
probed's probe endpoints answered over time, scenario.py runs probed and notes the measured
rows; replay.py serves captured replies for the fast test_captures.py. Nothing here downloads
anything.
"""

"""goipd benchmarks: `python -m bench [--scenario N] [--quick]` (see bench/RESULTS.md).

goipd, the baselines, the simulator and the load generator each run as their own process on
loopback; goipd (or the baseline it is compared with) is pinned to one core and everything
else to the others, where the machine has more than one.
"""

"""Simulators of the upstream APIs, used by tests, `make demo` and the benchmarks."""

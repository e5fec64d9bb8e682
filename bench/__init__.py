"""`make bench`: the performance figures of one web process, measured on this machine.

`python -m bench` starts a private Redis, one worker and one web process, then measures open
streams (memory, Redis connections, fan-out spread), change-to-client latency and throughput, and
writes the figures to bench/results.md.
"""

"""Benchmarks: measured numbers (latency, throughput, memory) written to benchmarks/results/."""

"""Measurements that feed the scorecard: accuracy, latency/throughput, hardware identity."""

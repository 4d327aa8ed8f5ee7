"""plaster: a retraining orchestrator whose product is the rate of learning."""

__version__ = "0.1.0"

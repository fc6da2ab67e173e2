"""nekzusd: one HTTP + WebSocket API over Docker and Kubernetes containers."""

__version__ = "0.1.0"

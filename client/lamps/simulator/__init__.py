"""The virtual-time simulator: the live system's policies and engine model, thousands of requests
in seconds."""

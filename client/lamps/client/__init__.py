"""The Python SDK for the Scheduler service (sync and async)."""

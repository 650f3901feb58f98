"""What every service shares: server bootstrap, configuration, logs, metrics, channels."""

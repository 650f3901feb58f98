"""The services together, each a real process on loopback."""

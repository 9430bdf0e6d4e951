"""Storage backends of the relay: the interfaces and their implementations."""

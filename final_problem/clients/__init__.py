"""Python clients that talk to the running platform from any node."""

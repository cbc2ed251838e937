"""Configuration renderers shared by the charts and bare-metal (non-Kubernetes) hosts."""

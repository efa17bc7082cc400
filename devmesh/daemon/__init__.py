"""The per-mesh daemon: reconcile loop, xDS control plane, readiness, local API."""

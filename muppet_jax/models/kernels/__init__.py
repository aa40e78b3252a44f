"""Pallas kernels, each beside its plain-JAX reference and with a cost estimate computed from
its block loop."""

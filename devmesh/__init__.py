"""devmesh: a local service mesh on plain Docker."""

__version__ = "0.1.0"

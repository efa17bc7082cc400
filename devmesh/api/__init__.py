"""The typed contract between the daemon and its clients: `types` (values), `codec` (JSON)."""

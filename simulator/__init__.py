"""A fleet of devices in one process, running the real agent code against real services."""

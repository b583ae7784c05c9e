"""The asyncio daemon on every device: receives deployments, pulls and verifies modules, runs them."""

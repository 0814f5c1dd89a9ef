"""The agent's HTTP API (aiohttp): ``app`` builds it; one module per feature's routes."""

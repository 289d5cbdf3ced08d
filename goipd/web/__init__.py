"""The HTTP edge (aiohttp): routes, auth, limits, problem+json, handlers, hooks, probes."""

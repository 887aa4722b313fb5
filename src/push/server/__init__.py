"""`push serve`: the push server (web pages, JSON API, the agents' watch endpoint)."""

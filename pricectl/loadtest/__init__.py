"""``pricectl loadtest``: many SSE clients over several processes, and the report they add up to."""

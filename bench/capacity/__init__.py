"""The capacity study: the longest sequence (or largest batch) each configuration trains on under a
memory budget, searched probe by probe in fresh workers (`kind: capacity` suites)."""

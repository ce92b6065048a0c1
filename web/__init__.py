"""`digits web`: the page for the people who run the service (live status) and its Prometheus metrics."""

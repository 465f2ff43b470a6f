"""The operator's side: REST API, its client and the CLI, Prometheus metrics, reports."""

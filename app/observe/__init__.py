"""What the gateway tells its operators: Prometheus metrics, JSON logs, request ids, the per-request instrumentation."""

"""Optional integrations, each behind its own extra and imported explicitly.

- :mod:`cano.contrib.opentelemetry` (``pip install 'cano[otel]'``): traces and metrics
  through the OpenTelemetry API.
- :mod:`cano.contrib.prometheus` (``pip install 'cano[prometheus]'``): metrics through
  ``prometheus_client``.

Both are :class:`cano.WorkflowObserver` implementations that emit the metrics of the Rust
crate's ``MetricsObserver`` under the same names (listed in :mod:`cano.contrib._metrics`).
Importing this package imports neither library.
"""

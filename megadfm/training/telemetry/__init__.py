"""Training telemetry: per-mask-ratio-bucket loss sums, spike monitoring, metric windows and sinks."""

"""tomeplug evaluation: datasets, metrics, FLOPs, latency, the harness and the demo."""

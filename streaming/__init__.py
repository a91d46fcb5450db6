"""Real-time scoring over Kafka: broker helpers, replay producer, scoring consumer, metrics.

Submodules import their heavy dependencies (kafka-python, pandas, prometheus_client) themselves;
importing this package does nothing.
"""

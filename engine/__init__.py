"""hisbridge engine: configuration, channels, pipeline, message store, admin API and CLI."""

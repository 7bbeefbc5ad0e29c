"""replicate: a cheap-replication cost simulator."""
__version__ = "0.1.0"

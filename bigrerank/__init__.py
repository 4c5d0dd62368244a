"""bigrerank: cross-encoder reranker training (LCE) and serving on DeepSpeed."""
__version__ = "0.1.0"

"""bigrerank: cross-encoder reranker training (LCE) and serving on DeepSpeed."""
__version__ = "0.1.0"

__all__ = ["RerankerForInference"]


def __getattr__(name):
    # Imported lazily so that `import bigrerank` stays light (no torch/transformers until needed).
    if name == "RerankerForInference":
        from .inference.reranker import RerankerForInference
        return RerankerForInference
    raise AttributeError(name)

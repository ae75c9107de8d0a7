"""Large Memory Language Models: annotate corpora, store facts in Redis, pretrain and serve LMs that look facts up."""

__version__ = "0.1.0"

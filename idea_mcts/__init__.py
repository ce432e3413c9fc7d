"""IDEA-MCTS: Monte Carlo tree search over LLM instruction evolution (arXiv 2410.10392)."""

__version__ = "0.1.0"

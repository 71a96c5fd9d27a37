"""seqrec: user-behaviour sequence representations with LLM backbones for recommendation."""

__version__ = "0.1.0"

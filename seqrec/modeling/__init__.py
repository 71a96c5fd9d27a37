"""The seqrec model: LLM (+ LoRA) window encoder, causal window aggregator, profile fusion, item
tower and ranking head. ``from seqrec.modeling import SeqRecModel``."""

from seqrec.modeling.model import SeqRecModel, SeqRecOutput

__all__ = ["SeqRecModel", "SeqRecOutput"]

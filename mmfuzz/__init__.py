"""mmfuzz: property-based fuzzing of the Linux kernel's memory-management concurrency
protocols (TLB flushing, rmap, dirty bits) against a step-wise reference model."""

__version__ = "0.1.0"
__all__ = ["__version__"]

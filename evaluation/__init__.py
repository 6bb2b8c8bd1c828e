"""Evaluation protocols: the Set5-style image protocol, the REDS4 / Vimeo-90K-T video protocols, metrics
and result tables. Above archs/data/losses, below models (whose validation scores clips through it)."""
import vsrkit.utils  # noqa: F401  (applies the basicsr compatibility shim before any basicsr import)

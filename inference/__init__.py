"""Inference: how a network is fed frames, video input/output, and the decode → network → encode pipeline.
Above archs/data, below the command-line front ends in ``inference_scripts/``."""
import vsrkit.utils  # noqa: F401  (applies the basicsr compatibility shim before any basicsr import)

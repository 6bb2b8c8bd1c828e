"""The training engine: options (loading, checks), distributed set-up and the training loop. The top floor
below the command-line front ends: it may import every other package."""
import vsrkit.utils  # noqa: F401  (applies the basicsr compatibility shim before any basicsr import)

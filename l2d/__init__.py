"""l2d: learning to defer to K human experts in JAX, by EM or a surrogate loss (l2d.methods).

Importing the package touches no device and reads no global state; the heavy modules
(``l2d.train``, ``l2d.evaluate``) are imported only by the commands that need them.
"""

__version__ = "0.1.0"

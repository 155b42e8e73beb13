"""l2d: learning to defer to K human experts in JAX, by EM or a surrogate loss (l2d.methods).

Importing the package touches no device and reads no global state; the heavy modules
(``l2d.train``, ``l2d.evaluate``) are imported only by the commands that need them.
"""

import time

__version__ = "0.1.0"

# When the package was first imported, i.e. when an l2d command started: start-up times count
# from here, not from the process's start, which under run.sh (a shell that execs Python) would
# include setting up .venv.
IMPORTED_AT = time.time()

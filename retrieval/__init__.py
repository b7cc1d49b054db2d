"""The lowest layer: sources, the index, retrieval and the hard-constraint filters.

Importing the package first writes the process-wide library defaults
(:func:`retrieval.config.apply_process_defaults`): OpenMP reads ``OMP_WAIT_POLICY`` once,
when torch loads it, so it has to be set before any submodule pulls torch in.
"""

from .config import apply_process_defaults

apply_process_defaults()

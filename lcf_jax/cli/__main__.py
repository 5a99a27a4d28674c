"""`python -m lcf_jax.cli`: the `lcf` command."""

import sys

from lcf_jax.cli import main

sys.exit(main())

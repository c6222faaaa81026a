"""``python -m bcnn_triton``: the bcnn-triton command line."""

from bcnn_triton.cli import main

raise SystemExit(main())

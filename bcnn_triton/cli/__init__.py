"""The bcnn-triton command line."""

"""Where checkpoints and model folders live on disk (layout.py) and how any of them is opened (source.py).

Training (saving, resuming) and conversion/sampling (reading weights) both depend on this package;
neither imports the other.
"""

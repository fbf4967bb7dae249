"""bench/run.py's work, a package next to the script (which puts this folder on sys.path)."""

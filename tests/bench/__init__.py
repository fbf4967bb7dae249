"""Tests of the load generator (``hubbub bench``) and of ``bench/run.py``; helpers in helpers.py."""

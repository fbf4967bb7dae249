"""The load generator (``hubbub bench``): its ordering check and its scenarios."""

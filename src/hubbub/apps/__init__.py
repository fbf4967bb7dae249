"""Applications written on hubbub's own server API."""

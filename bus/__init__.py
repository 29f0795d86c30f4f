"""writebus bus service."""

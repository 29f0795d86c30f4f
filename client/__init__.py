"""writebus client library."""

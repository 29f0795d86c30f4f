"""Helpers several test modules import: server environments, raw wire peers, a fake NATS.

Fixtures live in ``conftest.py`` files; plain functions and classes live here.
"""

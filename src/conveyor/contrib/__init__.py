"""Integrations with other frameworks; each is imported only by a project that uses that framework."""

"""A minimal Django project that sends conveyor tasks (docs/django.md); the suite runs it against a real worker."""

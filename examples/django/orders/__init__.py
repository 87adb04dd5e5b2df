"""An app with a model and the tasks that use it."""

"""A small shop whose tasks the example tests (docs/testing.md) exercise."""

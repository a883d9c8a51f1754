"""Ferryman: make any application's use of the OpenAI API production-grade."""

__version__ = "0.1.0"

"""Mappers: placing a model in PIM banks and generating decode-step programs."""

"""Bridges to other training frameworks (imported on demand: scpo_lab itself never imports them)."""

"""Refurbishing: train a D2F model from a dLLM or AR checkpoint (`d2f refurbish`) and measure it (`d2f eval`).

Imports engine/ (checkpoint reading, decoding); engine/ never imports this package.
"""

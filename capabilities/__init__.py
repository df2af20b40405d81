"""Capability logic of capserve.

Nothing here imports Ray; engines are reached through a protocol.
"""

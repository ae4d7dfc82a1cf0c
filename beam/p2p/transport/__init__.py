"""
Transports: how raw connections are dialled and accepted (TCP, memory).
"""

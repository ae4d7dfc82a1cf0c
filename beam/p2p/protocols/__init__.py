"""
The small libp2p protocols every host serves: identify, ping, echo.
"""

"""
The daemon: the MultiService a user runs, its config, logs and control socket.
"""

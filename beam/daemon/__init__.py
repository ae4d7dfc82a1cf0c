"""
The daemon: the MultiService a user runs (L{service}), the services it
runs (registered in L{builtins} and by plugins, L{plugins}), its status
(L{status}), config, logs and control socket (L{control}).
"""

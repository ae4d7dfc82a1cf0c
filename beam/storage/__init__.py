"""
Files Beam writes: atomic writes, the home directory and its state file.
"""

"""
What a person sees in the terminal (issue 12), kept out of L{beam.cli}'s
argument handling: styled text and tables (with C{rich}, only on a
terminal and never with C{NO_COLOR}), live status lines, progress while
waiting, QR codes, shell completion and the manual page generated from the
parser.  Every module here is imported lazily by the CLI, so that C{beam
--help} stays fast (L{beam.test.test_cost}).
"""

"""
Share addresses as QR codes in the terminal (C{beam PORT --qr}, issue 12),
so a phone or another machine's camera can take the address without
anyone typing 60 characters.

The symbol is made by U{segno<https://github.com/heuer/segno>}: pure
Python (no Pillow, no C library), maintained, and standard-conformant
(ISO/IEC 18004, error correction, masking).  We only draw its matrix,
two modules per character cell with the Unicode half blocks, so that an
address fits a normal terminal.

A full QR code is always made, never a Micro QR code (segno's default for
short text): phone cameras read only the full kind.  The quiet zone is the
standard four modules.

Drawing: light modules are the ink (C{█ ▀ ▄}), dark ones blank.  On a
terminal that allows colour (L{colourAllowed}) every line is painted
bright white on black, so the code reads the right way round on a light
background too; without colour it relies on the usual light-on-dark
terminal (scanners also read most inverted codes).
"""

from __future__ import annotations

import os
from typing import TextIO

__all__ = ["qrMatrix", "renderQR", "colourAllowed", "QUIET_ZONE"]

#: Modules of light border around the symbol (ISO/IEC 18004: 4).
QUIET_ZONE = 4

#: (top light, bottom light) -> the character for one cell.
_CELLS = {
    (False, False): " ",
    (True, False): "\u2580",  # upper half block
    (False, True): "\u2584",  # lower half block
    (True, True): "\u2588",  # full block
}

_PAINT = "\033[97;40m"
_RESET = "\033[0m"


def qrMatrix(text: str) -> list[list[bool]]:
    """
    The modules of C{text}'s QR code with its quiet zone, row by row,
    C{True} for dark.
    """
    import segno

    symbol = segno.make(text, micro=False, error="m")
    size = int(symbol.symbol_size(border=0)[0])
    blank = [False] * (size + 2 * QUIET_ZONE)
    rows = [list(blank) for _ in range(QUIET_ZONE)]
    for row in symbol.matrix:
        rows.append([False] * QUIET_ZONE + [bool(m) for m in row] + [False] * QUIET_ZONE)
    rows.extend(list(blank) for _ in range(QUIET_ZONE))
    return rows


def renderQR(text: str, colour: bool = False) -> str:
    """
    C{text}'s QR code drawn with half blocks, one line per two rows of
    modules (an odd last row is paired with more quiet zone), lines ending
    in a newline.

    @param colour: paint each line bright white on black (ANSI) so that it
        reads on any terminal background.
    """
    rows = qrMatrix(text)
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))
    lines = []
    for top, bottom in zip(rows[::2], rows[1::2]):
        cells = "".join(_CELLS[(not t, not b)] for t, b in zip(top, bottom))
        lines.append(f"{_PAINT}{cells}{_RESET}" if colour else cells)
    return "\n".join(lines) + "\n"


def colourAllowed(stream: TextIO) -> bool:
    """
    Whether C{stream} may get ANSI colour: a terminal, C{NO_COLOR} unset
    (U{https://no-color.org}) and C{TERM} not C{dumb}.  Asks
    C{beam.console.style} when that module is there, so that the whole
    CLI decides alike.
    """
    try:
        from beam.console import style
    except ImportError:
        style = None  # type: ignore[assignment]
    decide = getattr(style, "colourAllowed", None)
    if callable(decide):
        return bool(decide(stream))
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"

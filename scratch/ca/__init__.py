"""scratch.ca: cellular automata, from Life to self-replication (see docs/ca.md).

life.py      Life-like rules, a reference engine and a bit-packed one (numba or numpy)
life_rle.py  RLE pattern files and built-in patterns
evoloop.py   von Neumann rule tables and Sayama's evoloop
soup.py      the BFF primordial soup
display.py   progress bars and GIFs of boards
figures.py   the figures of docs/ca.md

Commands: python -m scratch.life | scratch.evoloop | scratch.soup (or scratch.ca.life, ...).
"""

import os

# numba's OpenMP worker threads otherwise spin-wait between parallel steps; on a busy machine
# that spinning starves the thread holding the work (measured 30x slower on 2 shared cores).
# Set here, before any module of the package imports numba, and only if the user has not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

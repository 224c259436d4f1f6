"""python -m scratch.evoloop (a command name docs and tools rely on) runs scratch.ca.evoloop."""

from scratch import helpers
from scratch.ca.evoloop import PROG, main

if __name__ == "__main__":
    helpers.cli_main(main, PROG)

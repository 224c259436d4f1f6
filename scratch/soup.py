"""python -m scratch.soup (a command name docs and tools rely on) runs scratch.ca.soup."""

from scratch import helpers
from scratch.ca.soup import PROG, main

if __name__ == "__main__":
    helpers.cli_main(main, PROG)

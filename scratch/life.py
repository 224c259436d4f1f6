"""python -m scratch.life (a command name docs and tools rely on) runs scratch.ca.life."""

from scratch import helpers
from scratch.ca.life import PROG, main

if __name__ == "__main__":
    helpers.cli_main(main, PROG)

from scratch import helpers
from scratch.ga.cli import PROG, main

helpers.cli_main(main, PROG)

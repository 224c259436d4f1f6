from scratch import helpers
from scratch.nn.cli import PROG, main

helpers.cli_main(main, PROG)

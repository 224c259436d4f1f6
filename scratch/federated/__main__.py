from scratch import helpers
from scratch.federated.cli import PROG, main

helpers.cli_main(main, PROG)

"""``python -m simulators.einvoice``: run the e-invoice platform simulator alone."""

import argparse
import sys

from simulators.einvoice import add_arguments, main

parser = argparse.ArgumentParser(prog="python -m simulators.einvoice")
add_arguments(parser)
sys.exit(main(parser.parse_args()))

"""`python -m tools.ambiguous_mnist`: generate Ambiguous-MNIST (see the package docstring for the flags).

The command line and `generate` live in `tools.ambiguous_mnist.pipeline`, so that importing the package never
runs, or imports, this entry point.
"""

import sys

from tools.ambiguous_mnist.pipeline import get_args_parser, main

if __name__ == "__main__":
    main(get_args_parser().parse_args(sys.argv[1:]))

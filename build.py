"""Compile a checkpoint into an engine directory:  python build.py CHECKPOINT --out DIR [options]

The compiler driver is engines/build.py (installed as `aerie build`); `python build.py --help` lists its options.
"""

import sys

from engines.build import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m sqfx ...`: see sqfx/cli.py."""
import sys

from .cli import main

sys.exit(main())

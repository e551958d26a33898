"""`python -m moodtag` is the `moodtag` command."""
import sys

from .cli import main

sys.exit(main())

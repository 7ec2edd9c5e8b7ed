"""`python -m hub_scripts.space --model embedded:salad`: the Space's app, served here (`local.py`)."""

from .local import main

main()

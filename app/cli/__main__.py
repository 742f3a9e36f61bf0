"""`python -m app.cli`: the `thinkgate` command."""

from app.cli.main import main

main()

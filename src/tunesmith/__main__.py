"""`python -m tunesmith …`: what the launcher starts in each worker of a multi-process run."""

from tunesmith.cli import main

if __name__ == "__main__":
    main()

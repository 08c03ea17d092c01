"""``python -m cloudflow``: the same command as ``cloudflow``."""

from cloudflow.cli import main

if __name__ == "__main__":
    main(prog_name="cloudflow")

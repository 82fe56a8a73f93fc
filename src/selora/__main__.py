import sys

from selora.cli import entry

if __name__ == "__main__":  # worker processes (spawn/forkserver) must not re-run the CLI
    sys.exit(entry())

"""Placeholder: this script is being written (see the issue tracker); it does nothing yet."""
import sys

if __name__ == "__main__":
    print("finetuning.py: not implemented yet", file=sys.stderr)
    sys.exit(1)

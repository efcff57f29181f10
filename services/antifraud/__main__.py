"""Process entry point: `python -m services.antifraud`."""

from services.antifraud.api import register
from shared.server import main

if __name__ == "__main__":
    main("antifraud", register)

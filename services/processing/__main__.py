"""Process entry point: `python -m services.processing`."""

from services.processing.api import register
from shared.server import main

if __name__ == "__main__":
    main("processing", register)

"""Process entry point: `python -m services.cards`."""

from services.cards.api import register
from shared.server import main

if __name__ == "__main__":
    main("cards", register)

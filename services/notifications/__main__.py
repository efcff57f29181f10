"""Process entry point: `python -m services.notifications`."""

from services.notifications.api import register
from shared.server import main

if __name__ == "__main__":
    main("notifications", register)

"""``ferryman mock``: an OpenAI API emulator with limits, faults and fixtures."""

from ferryman.mock.app import MockApp, create_app
from ferryman.mock.server import BackgroundServer
from ferryman.mock.settings import MockSettings

__all__ = ["BackgroundServer", "MockApp", "MockSettings", "create_app"]

"""(being written)"""

from ferryman.mock.call import Endpoint

ENDPOINTS: list[Endpoint] = []

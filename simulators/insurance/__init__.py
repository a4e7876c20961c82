"""Insurance simulator: the national JSON platform and a regional SOAP service in one
aiohttp app with persistent state and switchable faults (see ``app`` for routes).

``serve(host, port, ...)`` starts it from code; ``main(argv)`` runs it from a command line.
"""

from simulators.insurance.app import Simulator, build_app, main, serve
from simulators.insurance.gateway import GatewayCheck

__all__ = ["GatewayCheck", "Simulator", "build_app", "main", "serve"]

"""reach.py HOST PORT: say whether this host reaches HOST on TCP PORT.

Prints "reached" when a connection opens or is refused (the host answered: nothing
listens there yet, which is expected before an install), "unreachable" otherwise.
"""

import socket
import sys

host, port = sys.argv[1], int(sys.argv[2])
try:
    socket.create_connection((host, port), timeout=3).close()
    print("reached")
except ConnectionRefusedError:
    print("reached")
except OSError as e:
    print(f"unreachable: {e}")

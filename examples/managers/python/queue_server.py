#!/usr/bin/env python3
"""queue_server.py: the docs' remote manager ("Using a remote manager"), in Python, with
queue_server's command line: a task queue and a result queue served until a client asks the
server to shut down. Prints the address it listens on (a port 0 resolved) as its first line, in
troupe's syntax. troupe's queue_worker and queue_client use it as they use the C++ queue_server
(a troupe client speaks CPython's manager dialect to a Python manager, doc/interop.md).

    queue_server.py --address 127.0.0.1:0 --authkey 736563726574
"""
import queue

from queue_common import QueueManager, arguments, python_address

task_queue = queue.Queue()
result_queue = queue.Queue()
QueueManager.register('get_task_queue', callable=lambda: task_queue)
QueueManager.register('get_result_queue', callable=lambda: result_queue)

args = arguments()
m = QueueManager(address=python_address(args.address), authkey=bytes.fromhex(args.authkey))
server = m.get_server()
a = server.address
if isinstance(a, bytes):  # an abstract Unix name, as getsockname() gives it
    a = a.decode()
if isinstance(a, tuple):
    print(f'[{a[0]}]:{a[1]}' if ':' in a[0] else f'{a[0]}:{a[1]}', flush=True)
elif a.startswith('\0'):
    print('unix-abstract:' + a[1:], flush=True)
else:
    print('unix:' + a, flush=True)
server.serve_forever()

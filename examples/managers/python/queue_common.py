"""Shared by the Python programs of the docs' remote-manager recipe ("Using a remote manager"):
the manager class with its two typeids, and troupe's address syntax (HOST:PORT, [V6]:PORT,
unix:PATH, unix-abstract:NAME) read into Python's address forms, so that these programs take the
same command lines as the C++ ones (examples/managers/queue_*.cpp)."""
import argparse
import os
from multiprocessing.managers import BaseManager


class QueueManager(BaseManager):
    pass


def python_address(text):
    if text.startswith('unix:'):
        return text[len('unix:'):]
    if text.startswith('unix-abstract:'):
        return '\0' + text[len('unix-abstract:'):]
    host, _, port = text.rpartition(':')
    return (host.strip('[]'), int(port))


def arguments(*extra):
    p = argparse.ArgumentParser()
    p.add_argument('--address', required=True, help='HOST:PORT, unix:PATH or unix-abstract:NAME')
    p.add_argument('--authkey', default=os.environ.get('TROUPE_AUTHKEY'),
                   help='the key, in hex (default: TROUPE_AUTHKEY from the environment, which '
                        'keeps it off the command line)')
    for name in extra:
        p.add_argument(name, type=int, default=0)
    args = p.parse_args()
    if not args.authkey:
        p.error('missing --authkey (or TROUPE_AUTHKEY in the environment)')
    return args


def manager(args):
    """The connecting side: the typeids with no callable, as in the docs' client programs."""
    QueueManager.register('get_task_queue')
    QueueManager.register('get_result_queue')
    m = QueueManager(address=python_address(args.address), authkey=bytes.fromhex(args.authkey))
    m.connect()
    return m

#!/usr/bin/env python3
"""Prints the expected rows of containers_test.cpp's PythonTable test, computed by this python3.

Each case builds the object SyncManager's typeid would build (dict, list, set, Namespace,
managers.Value, array.array for Array), calls one method as the proxy would, and records
repr(result) (or "!Class: message") and repr(object) afterwards. Where troupe differs by design
(containers.hpp, "Differences from Python"), the result is mapped the same way here: views and
iterators become lists, in-place operators return None, and a
NotImplemented result becomes the TypeError Python raises for the operator.

    python3 containers_expected.py > rows.inc   # then paste into containers_test.cpp
"""
import array
import operator
import sys
import multiprocessing.managers as managers

OPS = {'__or__': operator.or_, '__and__': operator.and_, '__sub__': operator.sub,
       '__xor__': operator.xor, '__lt__': operator.lt, '__le__': operator.le,
       '__gt__': operator.gt, '__ge__': operator.ge, '__ior__': operator.ior,
       '__iand__': operator.iand, '__isub__': operator.isub, '__ixor__': operator.ixor,
       '__add__': operator.add, '__mul__': operator.mul, '__imul__': operator.imul,
       '__iadd__': operator.iadd}
REFLECTED = {'__ror__': operator.or_, '__rand__': operator.and_, '__rsub__': operator.sub,
             '__rxor__': operator.xor, '__rmul__': operator.mul}


def make(typeid, args, kwargs):
    if typeid == 'dict':
        return dict(*args, **kwargs)
    if typeid == 'list':
        return list(*args, **kwargs)
    if typeid == 'set':
        return set(*args, **kwargs)
    if typeid == 'Namespace':
        return managers.Namespace(*args, **kwargs)
    if typeid == 'Value':
        return managers.Value(*args, **kwargs)
    if typeid == 'Array':
        kwargs = dict(kwargs)
        kwargs.pop('lock', None)
        return array.array(*args[:2], **kwargs)
    raise ValueError(typeid)


def call(obj, method, args, kwargs):
    if method in REFLECTED:
        return REFLECTED[method](args[0], obj)
    if method in OPS and len(args) == 1 and not kwargs:
        r = OPS[method](obj, args[0])
        return None if method.startswith('__i') else r
    r = getattr(obj, method)(*args, **kwargs)
    if method in ('__iadd__', '__imul__', '__ior__', '__iand__', '__isub__', '__ixor__'):
        return None
    name = type(r).__name__
    if name in ('dict_keys', 'dict_values', 'list_reverseiterator', 'dict_reversekeyiterator',
                'set_iterator', 'dict_keyiterator'):
        return list(r)
    if name == 'dict_items':
        return list(r)
    return r


def state(obj):
    if isinstance(obj, array.array):
        return repr(obj).replace("array('u', ", "array('u', ")
    return repr(obj)


CASES = [
    # list
    ('list', ([1, 2, 3],), {}, '__len__', (), {}),
    ('list', ([1, 2, 3],), {}, '__getitem__', (-1,), {}),
    ('list', ([1, 2, 3],), {}, '__getitem__', (3,), {}),
    ('list', ([1, 2, 3],), {}, '__getitem__', (-4,), {}),
    ('list', ([1, 2, 3],), {}, '__getitem__', ('x',), {}),
    ('list', ([1, 2, 3],), {}, '__getitem__', (1.0,), {}),
    ('list', ([1, 2, 3],), {}, '__getitem__', (True,), {}),
    ('list', ([0, 1, 2, 3, 4, 5],), {}, '__getitem__', (slice(1, None, 2),), {}),
    ('list', ([0, 1, 2, 3, 4, 5],), {}, '__getitem__', (slice(None, None, -1),), {}),
    ('list', ([0, 1, 2, 3, 4, 5],), {}, '__getitem__', (slice(-2, -100, -2),), {}),
    ('list', ([0, 1, 2, 3, 4, 5],), {}, '__getitem__', (slice(100, 200, None),), {}),
    ('list', ([0, 1, 2],), {}, '__getitem__', (slice(None, None, 0),), {}),
    ('list', ([0, 1, 2],), {}, '__getitem__', (slice('a', None, None),), {}),
    ('list', ([1, 2, 3],), {}, '__setitem__', (0, 'x'), {}),
    ('list', ([1, 2, 3],), {}, '__setitem__', (5, 'x'), {}),
    ('list', ([1, 2, 3],), {}, '__setitem__', (slice(0, 2, None), [7, 8, 9]), {}),
    ('list', ([1, 2, 3],), {}, '__setitem__', (slice(0, 3, 2), ['a', 'b']), {}),
    ('list', ([1, 2, 3],), {}, '__setitem__', (slice(0, 3, 2), [1, 2, 3]), {}),
    ('list', ([1, 2, 3],), {}, '__setitem__', (slice(0, 2, None), 5), {}),
    ('list', ([1, 2, 3],), {}, '__setitem__', (slice(3, 0, None), 'ab'), {}),
    ('list', ([1, 2, 3],), {}, '__setitem__', (1,), {}),
    ('list', ([1, 2, 3],), {}, '__delitem__', (-1,), {}),
    ('list', ([1, 2, 3],), {}, '__delitem__', (3,), {}),
    ('list', ([0, 1, 2, 3, 4, 5],), {}, '__delitem__', (slice(None, None, 2),), {}),
    ('list', ([0, 1, 2, 3, 4, 5],), {}, '__delitem__', (slice(4, 1, -1),), {}),
    ('list', ([1, 2.0, 'a'],), {}, '__contains__', (2,), {}),
    ('list', ([1, 2.0, 'a'],), {}, '__contains__', (b'a',), {}),
    ('list', ([1],), {}, 'append', ((2, [3]),), {}),
    ('list', ([1],), {}, 'append', (), {}),
    ('list', ([1],), {}, 'append', (1, 2), {}),
    ('list', ([1],), {}, 'extend', ('ab',), {}),
    ('list', ([1],), {}, 'extend', ({'k': 1, 'j': 2},), {}),
    ('list', ([1],), {}, 'extend', (b'\x01\xff',), {}),
    ('list', ([1],), {}, 'extend', (5,), {}),
    ('list', ([1],), {}, '__iadd__', ((2, 3),), {}),
    ('list', ([1, 2],), {}, 'insert', (-100, 'x'), {}),
    ('list', ([1, 2],), {}, 'insert', (100, 'x'), {}),
    ('list', ([1, 2],), {}, 'insert', (-1, 'x'), {}),
    ('list', ([1, 2],), {}, 'insert', (1,), {}),
    ('list', ([1, 2],), {}, 'insert', ('a', 1), {}),
    ('list', ([1, 2, 3],), {}, 'pop', (), {}),
    ('list', ([1, 2, 3],), {}, 'pop', (0,), {}),
    ('list', ([1, 2, 3],), {}, 'pop', (3,), {}),
    ('list', ([],), {}, 'pop', (), {}),
    ('list', ([1],), {}, 'pop', (1, 2), {}),
    ('list', ([1, 2, 1],), {}, 'remove', (1.0,), {}),
    ('list', ([1, 2, 1],), {}, 'remove', (5,), {}),
    ('list', ([1, 2, 1, 2],), {}, 'index', (2,), {}),
    ('list', ([1, 2, 1, 2],), {}, 'index', (2, 2), {}),
    ('list', ([1, 2, 1, 2],), {}, 'index', (2, -1), {}),
    ('list', ([1, 2, 1, 2],), {}, 'index', (2, 0, 1), {}),
    ('list', ([1, 2, 1, 2],), {}, 'index', ('zz',), {}),
    ('list', ([1, 2, 1, 2],), {}, 'index', (), {}),
    ('list', ([1, True, 1.0, 'a'],), {}, 'count', (1,), {}),
    ('list', ([1, 2, 3],), {}, 'reverse', (), {}),
    ('list', ([3, 1.5, 2, True],), {}, 'sort', (), {}),
    ('list', ([3, 1, 2],), {}, 'sort', (), {'reverse': True}),
    ('list', ([(2, 'b'), (1, 'z'), (2, 'a')],), {}, 'sort', (), {}),
    ('list', (['b', 'a', 'c'],), {}, 'sort', (), {'key': None}),
    ('list', ([3, 'a', 1],), {}, 'sort', (), {}),
    ('list', ([3, 1],), {}, 'sort', (1,), {}),
    ('list', ([1, 2],), {}, 'clear', (), {}),
    ('list', ([1, [2]],), {}, 'copy', (), {}),
    ('list', ([1, 2],), {}, '__add__', ([3],), {}),
    ('list', ([1, 2],), {}, '__add__', ((3,),), {}),
    ('list', ([1, 2],), {}, '__mul__', (2,), {}),
    ('list', ([1, 2],), {}, '__mul__', (-1,), {}),
    ('list', ([1, 2],), {}, '__mul__', ('a',), {}),
    ('list', ([1, 2],), {}, '__rmul__', (3,), {}),
    ('list', ([1, 2],), {}, '__imul__', (2,), {}),
    ('list', ([1, 2],), {}, '__imul__', (0,), {}),
    ('list', ([1, 2, 3],), {}, '__reversed__', (), {}),
    ('list', ('abc',), {}, '__len__', (), {}),
    ('list', (5,), {}, '__len__', (), {}),
    # dict
    ('dict', ({'a': 1},), {}, '__getitem__', ('a',), {}),
    ('dict', ({'a': 1},), {}, '__getitem__', ('b',), {}),
    ('dict', ({1: 'one'},), {}, '__getitem__', (1.0,), {}),
    ('dict', ({1: 'one'},), {}, '__getitem__', (True,), {}),
    ('dict', ({},), {}, '__getitem__', ([1],), {}),
    ('dict', ({(1, 2): 'p'},), {}, '__getitem__', ((1, 2),), {}),
    ('dict', ({1: 'one'},), {}, '__setitem__', (1.0, 'uno'), {}),
    ('dict', ({},), {}, '__setitem__', ({1}, 'x'), {}),
    ('dict', ({'a': 1, 'b': 2},), {}, '__delitem__', ('a',), {}),
    ('dict', ({'a': 1},), {}, '__delitem__', ('z',), {}),
    ('dict', ({'a': 1},), {}, '__contains__', ('a',), {}),
    ('dict', ({'a': 1},), {}, '__contains__', (b'a',), {}),
    ('dict', ({'a': 1, 'b': 2},), {}, '__len__', (), {}),
    ('dict', ({'a': 1, 'b': 2},), {}, '__iter__', (), {}),
    ('dict', ({'a': 1, 'b': 2},), {}, '__reversed__', (), {}),
    ('dict', ({'a': 1, 'b': 2},), {}, 'keys', (), {}),
    ('dict', ({'a': 1, 'b': 2},), {}, 'keys', (1,), {}),
    ('dict', ({'a': 1, 'b': 2},), {}, 'values', (), {}),
    ('dict', ({'a': 1, 'b': 2},), {}, 'items', (), {}),
    ('dict', ({'a': 1},), {}, 'get', ('a',), {}),
    ('dict', ({'a': 1},), {}, 'get', ('z',), {}),
    ('dict', ({'a': 1},), {}, 'get', ('z', 0), {}),
    ('dict', ({'a': 1},), {}, 'get', (), {}),
    ('dict', ({'a': 1},), {}, 'get', (1, 2, 3), {}),
    ('dict', ({'a': 1},), {}, 'get', (), {'a': 1}),
    ('dict', ({'a': 1},), {}, 'setdefault', ('a', 5), {}),
    ('dict', ({'a': 1},), {}, 'setdefault', ('b', 5), {}),
    ('dict', ({'a': 1},), {}, 'setdefault', ('c',), {}),
    ('dict', ({'a': 1},), {}, 'pop', ('a',), {}),
    ('dict', ({'a': 1},), {}, 'pop', ('z',), {}),
    ('dict', ({'a': 1},), {}, 'pop', ('z', None), {}),
    ('dict', ({'a': 1, 'b': 2},), {}, 'popitem', (), {}),
    ('dict', ({},), {}, 'popitem', (), {}),
    ('dict', ({'a': 1},), {}, 'update', ({'b': 2, 'a': 0},), {}),
    ('dict', ({'a': 1},), {}, 'update', ([('x', 1), ['y', 2], 'zw'],), {}),
    ('dict', ({'a': 1},), {}, 'update', (), {'k': 'v'}),
    ('dict', ({'a': 1},), {}, 'update', ([(1, 2, 3)],), {}),
    ('dict', ({'a': 1},), {}, 'update', ([1],), {}),
    ('dict', ({'a': 1},), {}, 'update', (5,), {}),
    ('dict', ({'a': 1},), {}, 'update', ({}, {}), {}),
    ('dict', ({'a': 1},), {}, '__or__', ({'b': 2, 'a': 3},), {}),
    ('dict', ({'a': 1},), {}, '__or__', (5,), {}),
    ('dict', ({'a': 1},), {}, '__ror__', ({'b': 2, 'a': 3},), {}),
    ('dict', ({'a': 1},), {}, '__ior__', ({'b': 2},), {}),
    ('dict', ({'a': 1},), {}, '__ior__', ([('c', 3)],), {}),
    ('dict', ({'a': 1},), {}, 'clear', (), {}),
    ('dict', ({'a': [1]},), {}, 'copy', (), {}),
    ('dict', ({},), {}, 'fromkeys', ('aba',), {}),
    ('dict', ({},), {}, 'fromkeys', ([1, 2], 0), {}),
    ('dict', ({},), {}, 'fromkeys', (5,), {}),
    ('dict', ([('a', 1)],), {'b': 2}, '__len__', (), {}),
    # set
    ('set', ([1, 2],), {}, 'add', (3,), {}),
    ('set', ([1, 2],), {}, 'add', (1.0,), {}),
    ('set', ([1, 2],), {}, 'add', ([1],), {}),
    ('set', ([1, 2],), {}, 'add', (), {}),
    ('set', ([1, 2],), {}, 'discard', (5,), {}),
    ('set', ([1, 2],), {}, 'discard', (2,), {}),
    ('set', ([1, 2],), {}, 'remove', (5,), {}),
    ('set', ([1, 2],), {}, 'remove', ('five',), {}),
    ('set', ([],), {}, 'pop', (), {}),
    ('set', ([1, 2],), {}, '__contains__', (2.0,), {}),
    ('set', ([1, 2],), {}, '__contains__', ([1],), {}),
    ('set', ([frozenset([1])],), {}, '__contains__', ({1},), {}),
    ('set', ([1, 2],), {}, '__len__', (), {}),
    ('set', ([1, 2, 3],), {}, '__and__', ({2, 3, 4},), {}),
    ('set', ([1, 2, 3],), {}, '__and__', ([2],), {}),
    ('set', ([1, 2, 3],), {}, '__rand__', ({2, 3, 4},), {}),
    ('set', ([1, 2, 3],), {}, '__or__', ({4},), {}),
    ('set', ([1, 2, 3],), {}, '__sub__', ({2},), {}),
    ('set', ([1, 2, 3],), {}, '__rsub__', ({2, 9},), {}),
    ('set', ([1, 2, 3],), {}, '__xor__', ({3, 4},), {}),
    ('set', ([1, 2, 3],), {}, '__rxor__', ({3, 4},), {}),
    ('set', ([1, 2, 3],), {}, '__iand__', ({1, 5},), {}),
    ('set', ([1, 2, 3],), {}, '__ior__', ({1, 5},), {}),
    ('set', ([1, 2, 3],), {}, '__isub__', ({1, 5},), {}),
    ('set', ([1, 2, 3],), {}, '__ixor__', ({1, 5},), {}),
    ('set', ([1, 2, 3],), {}, '__ior__', ([5],), {}),
    ('set', ([1, 2],), {}, '__lt__', ({1, 2, 3},), {}),
    ('set', ([1, 2],), {}, '__lt__', ({1, 2},), {}),
    ('set', ([1, 2],), {}, '__le__', ({1, 2},), {}),
    ('set', ([1, 2],), {}, '__gt__', ({1},), {}),
    ('set', ([1, 2],), {}, '__ge__', ({3},), {}),
    ('set', ([1, 2],), {}, '__lt__', (5,), {}),
    ('set', ([1, 2],), {}, 'union', ([3], 'ab'), {}),
    ('set', ([1, 2],), {}, 'union', (), {}),
    ('set', ([1, 2],), {}, 'union', (5,), {}),
    ('set', ([1, 2, 3],), {}, 'intersection', ([2, 3], (3,)), {}),
    ('set', ([1, 2, 3],), {}, 'difference', ([2], [3]), {}),
    ('set', ([1, 2, 3],), {}, 'symmetric_difference', ([3, 4],), {}),
    ('set', ([1, 2, 3],), {}, 'symmetric_difference', (), {}),
    ('set', ([1, 2],), {}, 'update', ([3], {4: 'x'}), {}),
    ('set', ([1, 2, 3],), {}, 'intersection_update', ([2, 3], [3]), {}),
    ('set', ([1, 2, 3],), {}, 'difference_update', ([2],), {}),
    ('set', ([1, 2, 3],), {}, 'symmetric_difference_update', ([3, 4],), {}),
    ('set', ([1, 2],), {}, 'isdisjoint', ([3],), {}),
    ('set', ([1, 2],), {}, 'isdisjoint', ([2],), {}),
    ('set', ([1, 2],), {}, 'issubset', ([1, 2, 3],), {}),
    ('set', ([1, 2],), {}, 'issuperset', ([1, 3],), {}),
    ('set', ([1, 2],), {}, 'copy', (), {}),
    ('set', ([1, 2],), {}, 'clear', (), {}),
    ('set', ([1, 2],), {}, 'add', (3,), {'x': 1}),
    # Namespace
    ('Namespace', (), {'b': 1, 'a': 'x', '_c': 2}, '__getattribute__', ('a',), {}),
    ('Namespace', (), {'b': 1}, '__getattribute__', ('zz',), {}),
    ('Namespace', (), {'b': 1}, '__getattribute__', (1,), {}),
    ('Namespace', (), {'b': 1}, '__setattr__', ('c', [1]), {}),
    ('Namespace', (), {'b': 1}, '__setattr__', ('b', None), {}),
    ('Namespace', (), {'b': 1}, '__delattr__', ('b',), {}),
    ('Namespace', (), {'b': 1}, '__delattr__', ('x',), {}),
    # Value (managers.Value does not check the typecode)
    ('Value', ('i', 5), {}, 'get', (), {}),
    ('Value', ('i', 5), {}, 'set', (6,), {}),
    ('Value', ('i', 5), {}, 'set', ('not an int',), {}),
    ('Value', ('d', 1.5), {'lock': False}, 'get', (), {}),
    # Array (array.array)
    ('Array', ('i', [1, 2, 3]), {}, '__len__', (), {}),
    ('Array', ('i', [1, 2, 3]), {}, '__getitem__', (-1,), {}),
    ('Array', ('i', [1, 2, 3]), {}, '__getitem__', (3,), {}),
    ('Array', ('i', [1, 2, 3]), {}, '__getitem__', ('a',), {}),
    ('Array', ('i', [1, 2, 3]), {}, '__getitem__', (slice(None, None, -1),), {}),
    ('Array', ('i', [1, 2, 3]), {}, '__getitem__', (slice(1, 1, None),), {}),
    ('Array', ('u', 'abc'), {}, '__getitem__', (slice(1, None, None),), {}),
    ('Array', ('i', [1, 2, 3]), {}, '__setitem__', (slice(0, 2, None), array.array('i', [7])), {}),
    ('Array', ('i', [1, 2, 3]), {}, '__setitem__', (slice(0, 2, None), array.array('l', [7])), {}),
    ('Array', ('i', [1, 2, 3]), {}, '__setitem__', (slice(0, 2, None), [7, 8]), {}),
    ('Array', ('i', [1, 2, 3]), {}, '__setitem__', (slice(None, None, 2), array.array('i', [7])), {}),
    ('Array', ('i', [1, 2, 3]), {}, '__setitem__', (0, 7), {}),
    ('Array', ('i', [1, 2, 3]), {}, '__setitem__', (0, 2**31), {}),
    ('Array', ('i', [1, 2, 3]), {}, '__setitem__', (0, 1.5), {}),
    ('Array', ('i', [1, 2, 3]), {}, '__setitem__', (5, 1), {}),
    ('Array', ('d', [1, 2]), {}, '__setitem__', (0, 'x'), {}),
    ('Array', ('d', [1, 2]), {}, '__setitem__', (1, True), {}),
    ('Array', ('f', [0.1]), {}, '__getitem__', (0,), {}),
    ('Array', ('b', [127, -128]), {}, '__len__', (), {}),
    ('Array', ('b', [128]), {}, '__len__', (), {}),
    ('Array', ('B', [-1]), {}, '__len__', (), {}),
    ('Array', ('h', [2**15]), {}, '__len__', (), {}),
    ('Array', ('H', [2**16 - 1]), {}, '__len__', (), {}),
    ('Array', ('I', [-1]), {}, '__len__', (), {}),
    ('Array', ('I', [2**32]), {}, '__len__', (), {}),
    ('Array', ('l', [2**63]), {}, '__len__', (), {}),
    ('Array', ('L', [-1]), {}, '__len__', (), {}),
    ('Array', ('q', [2**63]), {}, '__len__', (), {}),
    ('Array', ('Q', [2**64 - 1]), {}, '__getitem__', (0,), {}),
    ('Array', ('Q', [-1]), {}, '__len__', (), {}),
    ('Array', ('i', 'abc'), {}, '__len__', (), {}),
    ('Array', ('u', 'ab\u00e9'), {}, '__getitem__', (2,), {}),
    ('Array', ('u', ['ab']), {}, '__len__', (), {}),
    ('Array', ('d', [None]), {}, '__len__', (), {}),
    ('Array', ('c', [1]), {}, '__len__', (), {}),
    ('Array', ('i', []), {}, '__len__', (), {}),
    ('Array', ('h', b'\x01\x00\xff\xff'), {}, '__len__', (), {}),
    ('Array', ('h', b'\x01'), {}, '__len__', (), {}),
    ('Array', ('i', 5), {}, '__len__', (), {}),
]


def run(case):
    typeid, args, kwargs, method, margs, mkwargs = case
    try:
        obj = make(typeid, args, kwargs)
    except Exception as e:
        return '!%s: %s' % (type(e).__name__, e), '!init'
    try:
        r = repr(call(obj, method, margs, mkwargs))
    except Exception as e:
        r = '!%s: %s' % (type(e).__name__, e)
    return r, state(obj)


def cxx(s):
    return 'R"py(%s)py"' % s


print('// Generated by containers_expected.py with Python %s.' % sys.version.split()[0])
for case in CASES:
    typeid, args, kwargs, method, margs, mkwargs = case
    result, after = run(case)
    print('    {%s, %s, %s, %s, %s, %s, %s, %s},' % (
        cxx(typeid), cxx(repr(tuple(args))), cxx(repr(kwargs)), cxx(method),
        cxx(repr(tuple(margs))), cxx(repr(mkwargs)), cxx(result), cxx(after)))

# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decode kombu/Celery message envelopes from their headers.

A body is never unpickled or evaluated: protocol 2 puts everything a monitor needs
in the headers. Only a protocol 1 message with a JSON body has its body read, as JSON.

Whatever a broker holds (a message, a worker's reply, an event) is read here, and nothing
it holds makes these functions raise anything but NotAnEnvelope: JSON nested too deep to
parse safely, headers that are not a dict, a task name that is not a string all make a
message undecodable, which the modules count and skip.
"""

from __future__ import annotations

import ast
import base64
import collections
import datetime
import decimal
import itertools
import json
import operator
import re
import uuid
from collections.abc import Mapping
from itertools import repeat

UNKNOWN_TASK = '<unknown>'
# The task "name" of a message that cannot be decoded (not JSON, not an envelope, a task that is not a
# string): never a string, so a filter by task names never matches it; the queue modules count it apart.
UNDECODABLE = None

# The header fields that describe a task (Celery protocol 2), in the order they are returned.
HEADER_FIELDS = ('task', 'id', 'eta', 'expires', 'retries', 'argsrepr', 'kwargsrepr', 'origin',
                 'parent_id', 'root_id', 'group')

# Deeper JSON is refused before it is parsed: Python's parser recurses (a body of '[' * 200000 ends in
# RecursionError), and so do the consumers of what it returns. Celery's deepest reply (conf) is a few levels.
MAX_DEPTH = 64

# Fast path for a backlog breakdown: the first '"task": "..."' of a Redis element is the
# header (the body is base64, and a quote inside a JSON string is escaped, so a "task"
# key cannot appear there unescaped).
_TASK_RE = re.compile(rb'"task":\s*"((?:[^"\\]|\\.)*)"')
# A JSON string (unrolled: fast over a long base64 body), and what nests outside strings.
_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NESTING_RE = re.compile(r'[\[\]{}]')
_NESTING = {'[': 1, '{': 1, ']': -1, '}': -1}


class NotAnEnvelope(ValueError):
    """The data is not a kombu message envelope (or not JSON at all); the message says what it is instead."""


def kind(value):
    """The plain type name of ``value`` for messages: templating hands plugins subclasses of int, str,
    dict, list whose own names (_AnsibleTaggedInt) mean nothing to a user."""
    if isinstance(value, Mapping):
        return 'dict'
    return next(k.__name__ for k in type(value).__mro__ if k.__module__ == 'builtins')


def _describe(value):
    text = value if isinstance(value, str) else repr(value)
    return (text[:60] + '...') if len(text) > 60 else text


def _depth(text):
    """How deep JSON ``text`` nests (brackets inside strings do not count)."""
    if text.count('[') + text.count('{') <= MAX_DEPTH:
        return 0  # the common case, without a scan
    marks = _NESTING_RE.findall(_STRING_RE.sub('', text))
    return max(itertools.accumulate(map(_NESTING.__getitem__, marks)), default=0)


def loads(raw):
    """JSON from bytes (UTF-8) or text, or NotAnEnvelope: never RecursionError, whatever the input."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = raw.decode('utf-8')
        except UnicodeDecodeError:
            raise NotAnEnvelope('not a kombu message: %d bytes that are not UTF-8 text' % len(raw))
    if not isinstance(raw, str):
        raise NotAnEnvelope('not a kombu message: expected a JSON string, got %s' % kind(raw))
    if _depth(raw) > MAX_DEPTH:
        raise NotAnEnvelope('not a kombu message: JSON nested deeper than %d levels (%s)' % (MAX_DEPTH, _describe(raw)))
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # ValueError: also a number of more than 4300 digits
        raise NotAnEnvelope('not a kombu message: not JSON (%s)' % _describe(raw))


def load_envelope(raw):
    """Parse a Redis list element (kombu's JSON envelope) into a dict."""
    envelope = raw if isinstance(raw, dict) else loads(raw)
    if not isinstance(envelope, dict) or not ('headers' in envelope or 'body' in envelope):
        text = raw.decode('utf-8') if isinstance(raw, (bytes, bytearray)) else raw
        raise NotAnEnvelope('not a kombu message: a JSON %s without "headers" or "body" (%s)'
                            % (kind(envelope), _describe(text)))
    return envelope


def _mapping(envelope, key):
    """A dict field of an envelope ({} when absent or null), or NotAnEnvelope."""
    value = envelope.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise NotAnEnvelope('not a kombu message: "%s" is not a dict (%s)' % (key, kind(value)))
    return value


def json_body(envelope, kinds=dict):
    """The body of a message when it is JSON (of one of ``kinds``); None for any other serializer,
    and for a body that cannot be read."""
    if envelope.get('content-type') != 'application/json':
        return None
    body = envelope.get('body')
    properties = envelope.get('properties')
    if isinstance(properties, dict) and properties.get('body_encoding') == 'base64' and isinstance(body, str):
        try:
            body = base64.b64decode(body)
        except ValueError:
            return None
    try:
        loaded = loads(body) if isinstance(body, (str, bytes)) else body
    except NotAnEnvelope:
        return None
    return loaded if isinstance(loaded, kinds) else None


def make_envelope(body, headers, exchange, routing_key=''):
    """A JSON message as kombu's Redis transport stores it (what a kombu producer would write)."""
    return json.dumps({
        'body': base64.b64encode(json.dumps(body).encode('utf-8')).decode('ascii'),
        'content-encoding': 'utf-8',
        'content-type': 'application/json',
        'headers': headers,
        'properties': {'body_encoding': 'base64', 'delivery_mode': 1, 'priority': 0,
                       'delivery_tag': str(uuid.uuid4()),
                       'delivery_info': {'exchange': exchange, 'routing_key': routing_key}},
    })


def _text(value):
    """A header value as text: a string, bytes (pika gives a string that is not UTF-8 as bytes), a number
    or a datetime (an AMQP timestamp); None for anything else (a list, a table, a bool)."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode('utf-8', 'replace')
    elif isinstance(value, (datetime.date, datetime.time)):
        value = value.isoformat()
    elif isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    # JSON's "\ud800" is a lone surrogate, which cannot be written out as UTF-8.
    return value.encode('utf-8', 'replace').decode('utf-8')


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def undecodable(error):
    """The view of a message that cannot be decoded: every field null, the task UNDECODABLE, and why."""
    out = dict.fromkeys(HEADER_FIELDS + ('protocol', 'priority', 'content_type'))
    out.update(task=UNDECODABLE, error=str(error))
    return out


def describe_message(headers, properties=None, envelope=None):
    """The decoded view of one message: task, id, eta, retries, argsrepr, ... and priority.

    ``headers`` and ``properties`` are AMQP-style dicts; ``envelope`` (optional) is the
    whole kombu envelope, used only for a protocol 1 JSON body. Never raises: a message that
    cannot be decoded (headers that are not a dict, a task name that is not a string) gets
    undecodable()'s view. A message that names no task is UNKNOWN_TASK.
    """
    headers = {} if headers is None else headers
    properties = {} if properties is None else properties
    for what, value in (('headers', headers), ('properties', properties)):
        if not isinstance(value, Mapping):
            return undecodable('not a kombu message: "%s" is not a dict (%s)' % (what, kind(value)))
    fields, protocol = headers, 2
    if headers.get('task') in (None, '') and envelope is not None:
        body = json_body(envelope)
        if body and body.get('task') not in (None, ''):
            fields, protocol = body, 1
    task = fields.get('task')
    if task is not None and not isinstance(task, str):
        return undecodable('not a Celery task message: the task name is not a string (%s)' % kind(task))
    out = dict((field, _text(headers.get(field))) for field in HEADER_FIELDS)
    if protocol == 1:
        for field in ('id', 'eta', 'expires'):
            out[field] = _text(fields.get(field))
        out['argsrepr'] = json.dumps(fields.get('args'))[:1024] if 'args' in fields else None
        out['kwargsrepr'] = json.dumps(fields.get('kwargs'))[:1024] if 'kwargs' in fields else None
    out.update(task=_text(task) or UNKNOWN_TASK, retries=_int(fields.get('retries')), protocol=protocol,
               priority=_int(properties.get('priority')),
               content_type=_text((envelope or {}).get('content-type') or properties.get('content_type')))
    return out


# A repr longer than this is not parsed back (Celery cuts argsrepr far shorter by default).
MAX_REPR = 64 * 1024


def _literal(text):
    """A Python literal (what Celery's argsrepr/kwargsrepr hold) read back with ast.literal_eval, which
    evaluates nothing; None when it is not one, too long, or too deep."""
    text = _text(text)
    if not text or len(text) > MAX_REPR or text.count('(') + text.count('[') + text.count('{') > MAX_DEPTH:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def task_arguments(headers, envelope=None):
    """(args, kwargs) of a task message: from its JSON body (protocol 2: [args, kwargs, embed]; protocol 1:
    a dict with args and kwargs), else read back from the argsrepr/kwargsrepr headers; either is None when
    it cannot be told. A body is never unpickled. Never raises."""
    body = json_body(envelope, kinds=(list, dict)) if isinstance(envelope, Mapping) else None
    if isinstance(body, list) and len(body) >= 2:
        args, kwargs = body[0], body[1]
    elif isinstance(body, dict) and ('args' in body or 'kwargs' in body):
        args, kwargs = body.get('args'), body.get('kwargs')
    else:
        headers = headers if isinstance(headers, Mapping) else {}
        args, kwargs = _literal(headers.get('argsrepr')), _literal(headers.get('kwargsrepr'))
        if isinstance(args, tuple):
            args = list(args)
    return (args if isinstance(args, list) else None), (kwargs if isinstance(kwargs, dict) else None)


def decode_envelope(raw):
    """Decode a Redis list element (or an already parsed envelope) into describe_message()'s view,
    or undecodable()'s when it is not a kombu envelope. Never raises."""
    try:
        envelope = load_envelope(raw)
    except NotAnEnvelope as exc:
        return undecodable(exc)
    return describe_message(envelope.get('headers'), envelope.get('properties'), envelope)


def task_name_of(raw):
    """The task name of a Redis list element, fast: a regex first, a full decode only if needed.
    UNKNOWN_TASK when it names none, UNDECODABLE when it cannot be decoded; never raises."""
    match = _TASK_RE.search(raw) if isinstance(raw, (bytes, bytearray)) else None
    if match:
        name = match.group(1)
        try:
            name = json.loads(b'"' + name + b'"') if b'\\' in name else name.decode('utf-8', 'replace')
        except ValueError:
            name = None  # not a valid JSON string (\q, a cut \u escape): not kombu's JSON, decode it fully
        if isinstance(name, str) and name:
            return _text(name)
    return decode_envelope(raw)['task']


def count_task_names(elements):
    """task name -> count over raw Redis list elements, each named as task_name_of would (those that
    cannot be decoded under UNDECODABLE). Never raises.

    A backlog breakdown reads millions of elements, so the common case runs without a
    Python-level loop: when in every element the first '"task":' is kombu's plain
    '"task": "<name>"' (a name without escapes), the names are sliced out with C-level maps.
    Any other chunk is named element by element by task_name_of.
    """
    try:
        starts = [first + 9 for first in map(bytes.find, elements, repeat(b'"task":'))]
        plain = starts and min(starts) >= 9 and all(map(bytes.startswith, elements, repeat(b' "'), map(
            operator.sub, starts, repeat(2))))
    except TypeError:  # not bytes
        plain = False
    if plain:
        ends = list(map(bytes.find, elements, repeat(b'"'), starts))
        names = list(map(bytes.__getitem__, elements, map(slice, starts, ends)))
        if all(map(operator.lt, starts, ends)) and b'\\' not in b''.join(names):
            counts = {}
            for raw_name, n in collections.Counter(names).items():
                name = raw_name.decode('utf-8', 'replace')
                counts[name] = counts.get(name, 0) + n
            return counts
    counts = {}
    for raw in elements:
        name = task_name_of(raw)
        counts[name] = counts.get(name, 0) + 1
    return counts

# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decode kombu/Celery message envelopes from their headers.

A body is never unpickled or evaluated: protocol 2 puts everything a monitor needs
in the headers. Only a protocol 1 message with a JSON body has its body read, as JSON.
"""

from __future__ import annotations

import base64
import collections
import json
import operator
import re
import uuid
from collections.abc import Mapping
from itertools import repeat

UNKNOWN_TASK = '<unknown>'

# The header fields that describe a task (Celery protocol 2), in the order they are returned.
HEADER_FIELDS = ('task', 'id', 'eta', 'expires', 'retries', 'argsrepr', 'kwargsrepr', 'origin',
                 'parent_id', 'root_id', 'group')

# Fast path for a backlog breakdown: the first '"task": "..."' of a Redis element is the
# header (the body is base64, and a quote inside a JSON string is escaped, so a "task"
# key cannot appear there unescaped).
_TASK_RE = re.compile(rb'"task":\s*"((?:[^"\\]|\\.)*)"')


class NotAnEnvelope(ValueError):
    """The data is not a kombu message envelope; the message says what it is instead."""


def kind(value):
    """The plain type name of ``value`` for messages: templating hands plugins subclasses of int, str,
    dict, list whose own names (_AnsibleTaggedInt) mean nothing to a user."""
    if isinstance(value, Mapping):
        return 'dict'
    return next(k.__name__ for k in type(value).__mro__ if k.__module__ == 'builtins')


def _describe(value):
    text = value if isinstance(value, str) else repr(value)
    return (text[:60] + '...') if len(text) > 60 else text


def load_envelope(raw):
    """Parse a Redis list element (kombu's JSON envelope) into a dict."""
    if isinstance(raw, dict):
        envelope = raw
    else:
        if isinstance(raw, (bytes, bytearray)):
            try:
                raw = raw.decode('utf-8')
            except UnicodeDecodeError:
                raise NotAnEnvelope('not a kombu message: %d bytes that are not UTF-8 text' % len(raw))
        if not isinstance(raw, str):
            raise NotAnEnvelope('not a kombu message: expected a JSON string, got %s' % kind(raw))
        try:
            envelope = json.loads(raw)
        except ValueError:
            raise NotAnEnvelope('not a kombu message: not JSON (%s)' % _describe(raw))
    if not isinstance(envelope, dict) or not ('headers' in envelope or 'body' in envelope):
        raise NotAnEnvelope('not a kombu message: a JSON %s without "headers" or "body" (%s)'
                            % (kind(envelope), _describe(raw)))
    return envelope


def json_body(envelope, kinds=dict):
    """The body of a message when it is JSON (of one of ``kinds``); None for any other serializer."""
    if envelope.get('content-type') != 'application/json':
        return None
    body = envelope.get('body')
    if (envelope.get('properties') or {}).get('body_encoding') == 'base64' and isinstance(body, str):
        try:
            body = base64.b64decode(body).decode('utf-8')
        except (ValueError, UnicodeDecodeError):
            return None
    try:
        loaded = json.loads(body) if isinstance(body, (str, bytes)) else body
    except ValueError:
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


def describe_message(headers, properties=None, envelope=None):
    """The decoded view of one message: task, id, eta, retries, argsrepr, ... and priority.

    ``headers`` and ``properties`` are AMQP-style dicts; ``envelope`` (optional) is the
    whole kombu envelope, used only for a protocol 1 JSON body.
    """
    headers = headers or {}
    properties = properties or {}
    out = dict((field, headers.get(field)) for field in HEADER_FIELDS)
    out['protocol'] = 2
    if not headers.get('task') and envelope is not None:
        body = json_body(envelope)
        if body and body.get('task'):
            out['protocol'] = 1
            for field in ('task', 'id', 'eta', 'expires', 'retries'):
                out[field] = body.get(field)
            out['argsrepr'] = json.dumps(body.get('args'))[:1024] if 'args' in body else None
            out['kwargsrepr'] = json.dumps(body.get('kwargs'))[:1024] if 'kwargs' in body else None
    if not out['task']:
        out['task'] = UNKNOWN_TASK
    out['priority'] = properties.get('priority')
    out['content_type'] = (envelope or {}).get('content-type') or properties.get('content_type')
    return out


def decode_envelope(raw):
    """Decode a Redis list element (or an already parsed envelope) into describe_message()'s view."""
    envelope = load_envelope(raw)
    headers = envelope.get('headers')
    if not isinstance(headers, dict):
        headers = {}
    properties = envelope.get('properties')
    if not isinstance(properties, dict):
        properties = {}
    return describe_message(headers, properties, envelope)


def task_name_of(raw):
    """The task name of a Redis list element, fast: a regex first, a full decode only if needed."""
    match = _TASK_RE.search(raw) if isinstance(raw, (bytes, bytearray)) else None
    if match:
        name = match.group(1)
        try:
            name = json.loads(b'"' + name + b'"') if b'\\' in name else name.decode('utf-8', 'replace')
        except ValueError:
            name = None  # not a valid JSON string (\q, a cut \u escape): not kombu's JSON, decode it fully
        if isinstance(name, str) and name:
            return name
    try:
        return decode_envelope(raw)['task']
    except NotAnEnvelope:
        return UNKNOWN_TASK


def count_task_names(elements):
    """task name -> count over raw Redis list elements, each named as task_name_of would.

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

# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The RabbitMQ management HTTP API, through the standard library (Ansible's HTTP client costs start-up time
every task would pay): what AMQP cannot tell, such as unacknowledged counts and queue types.

Private to celeryops.fleet; the API may change between releases.
"""

from __future__ import annotations

import base64
import json
from http.client import HTTPException
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import HTTPSHandler, ProxyHandler, Request, build_opener

from ansible_collections.celeryops.fleet.plugins.module_utils._broker import BrokerError, passwords_in_urls, scrub, ssl_context

MANAGEMENT_PORT = 15672
MANAGEMENT_TLS_PORT = 15671
# What the queue modules read of each queue. leader, members and online: quorum queues; arguments and the policy:
# their delivery limit and dead-lettering.
QUEUE_COLUMNS = ('name,type,messages_ready,messages_unacknowledged,consumers,memory,leader,members,online,arguments,'
                 'effective_policy_definition')


def default_management_url(broker):
    """Same host as the broker, the management port (never the AMQP port)."""
    host = ('[%s]' % broker.host) if ':' in broker.host else broker.host
    if broker.tls:
        return 'https://%s:%d' % (host, MANAGEMENT_TLS_PORT)
    return 'http://%s:%d' % (host, MANAGEMENT_PORT)


def management_urls(value):
    """The base URLs in a management_url value: None, one URL, a list, or URLs separated by commas."""
    if not value:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    return [url for item in values for url in str(item).split(',') if url.strip()]


def _shown(url):
    """A management URL as messages show it: a user and password in it (management_url is not secret as a whole)
    are not."""
    return scrub(url, *passwords_in_urls(url))


class _Failure(object):
    """Why one management URL gave no answer."""

    def __init__(self, reason):
        self.reason = reason


class Management(object):
    """The RabbitMQ management HTTP API, or why it cannot be used (``error``, kept after a failed request).

    ``url``: one base URL, several (a list, or a string separated by commas: the nodes of a cluster), or None for
    the broker's host. A request goes to the URL that answered last, then to the others in order: any node of a
    cluster tells about every queue, so the API stays usable while one node is down."""

    def __init__(self, broker, url=None, user=None, password=None, validate_certs=True):
        self.broker = broker
        self.urls = [u.strip().rstrip('/') for u in management_urls(url)] or [default_management_url(broker)]
        self.url = self.urls[0]   # the one that answered last
        self.user = user if user is not None else (broker.user or 'guest')
        self.password = password if password is not None else (broker.password or 'guest')
        self.validate_certs = validate_certs
        self.error = None
        self._tls = None   # the TLS context, made on the first https request

    def get(self, path):
        reasons = []
        for url in [self.url] + [u for u in self.urls if u != self.url]:
            reason = self._get(url, path)
            if not isinstance(reason, _Failure):
                self.url, self.error = url, None
                return reason
            reasons.append('at %s: %s' % (_shown(url), scrub(reason.reason, *passwords_in_urls(url))))
        self.error = 'management API ' + '; '.join(reasons)
        raise BrokerError(self.error, option='management_url', endpoint=_shown(self.url))

    def _get(self, url, path):
        """The decoded answer of one GET, or a _Failure saying why there is none."""
        try:
            return json.loads(self._open(url, path))
        except HTTPError as exc:
            # The AMQP connection already proved the vhost exists: a 404 means that management_url
            # is not the management API (another web server, a missing path prefix). Reading it as
            # "no queues" would report zero unacked messages with confidence.
            return _Failure('HTTP %s%s' % (exc.code, {
                401: ' (check management_user and management_password)',
                403: ' (check management_user and management_password)',
                404: ' (is management_url the RabbitMQ management API, with its path prefix if any?)',
            }.get(exc.code, '')))
        except (URLError, OSError, ValueError, HTTPException) as exc:
            # HTTPException: something that is not HTTP answered (BadStatusLine from the AMQP
            # port, Flower's trap); URLError also wraps TLS validation failures.
            return _Failure(scrub(getattr(exc, 'reason', None) or exc, self.password) or type(exc).__name__)
        except BrokerError as exc:   # the CA file would not load
            return _Failure(exc.msg)

    def _open(self, url, path):
        """The body of one GET, with basic auth, no proxy (the API is next to the broker)."""
        handlers = [ProxyHandler({})]
        if url.startswith('https:'):
            if self._tls is None:
                self._tls = ssl_context(self.broker, verify=self.validate_certs, client_cert=False)
            handlers.append(HTTPSHandler(context=self._tls))
        credentials = base64.b64encode(('%s:%s' % (self.user, self.password)).encode('utf-8')).decode('ascii')
        request = Request(url + path, headers={'Authorization': 'Basic ' + credentials, 'Accept': 'application/json'})
        with build_opener(*handlers).open(request, timeout=self.broker.timeout) as response:
            return response.read()

    def listing(self, path, what='queues'):
        """The list of records (dicts with a name) at ``path``; BrokerError naming management_url if it is not."""
        records = self.get(path)
        if not isinstance(records, list) or not all(isinstance(r, dict) and 'name' in r for r in records):
            self.error = 'management API at %s: the answer is not a list of %s' % (_shown(self.url), what)
            raise BrokerError(self.error, option='management_url', endpoint=_shown(self.url))
        return records

    def queues(self, vhost, columns=QUEUE_COLUMNS):
        """name -> the queue's record, for every queue of the vhost, in one request."""
        return dict((r['name'], r) for r in self.listing('/api/queues/%s?columns=%s' % (quote(vhost, safe=''), columns)))

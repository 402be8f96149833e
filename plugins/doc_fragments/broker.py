# -*- coding: utf-8 -*-
# Copyright (c) celeryops.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):

    # The broker connection shared by every module (module_utils/_broker.py).
    DOCUMENTATION = r"""
options:
  broker_url:
    description:
      - The Celery broker URL, as in C(CELERY_BROKER_URL) or Celery's C(broker_url) setting.
      - C(redis://[:password@]host[:port][/db]), C(rediss://...) for TLS, C(amqp://user:password@host[:port]/vhost)
        or C(amqps://...) for TLS. kombu's C(amqp://host:5672//) form for the default vhost is accepted.
      - For C(rediss://) and C(amqps://), the query parameters C(ssl_cert_reqs) (C(required), C(optional), C(none)),
        C(ssl_ca_certs), C(ssl_certfile) and C(ssl_keyfile) are understood, as Celery understands them on C(rediss://).
        The options O(tls_ca_file), O(tls_cert_file), O(tls_key_file) and O(tls_verify) take precedence over them.
        Celery's own workers refuse these parameters on C(amqps://) (they take C(broker_use_ssl) instead), so a URL shared
        with the workers should leave them out there and the options be used.
      - A TLS URL never falls back to plaintext, and a plaintext URL never tries TLS.
      - A failover list, as Celery and kombu take it, is several URLs of one transport separated by C(;), such as
        C(amqp://user:pw1@rabbit1//;amqp://user:pw2@rabbit2//). They are tried in order, and the first that
        answers within O(connect_timeout) is used. A URL that refuses or does not answer moves on to the next one.
        A wrong password, vhost or certificate fails the task at once. Celery's C(broker_failover_strategy)
        (round-robin, shuffle) spreads long-lived workers over the URLs, so it does not apply to a one-shot check.
        The result's RV(broker) names the URL that answered, and C(broker.failover) shows its position and why the
        URLs before it were skipped. A password in any of the URLs is never shown.
      - Redis Sentinel, as Celery writes it, is C(sentinel://[:password@]host:26379[/db]), with several Sentinels
        separated by C(;) (C(sentinel://:pw@s1:26379/0;sentinel://s2:26379/0)). The password and database of the
        first URL are the master's, as kombu takes them. The master is named by O(master_name). Through
        Sentinel, every module, the inventory plugin and the lookup reach the master that the Sentinels name now.
        A wait reconnects through them after a failover. The result's RV(broker) names that master, and
        C(broker.sentinel) names the Sentinel that answered.
      - With C(sentinel://), the connection to the master uses TLS when O(tls_ca_file), O(tls_cert_file),
        O(tls_key_file) or O(tls_verify) is set (Celery's C(broker_use_ssl)). The Sentinels are reached in plaintext.
      - If not set, the environment variable E(CELERY_BROKER_URL) is used.
      - The value is never shown in output; messages name the endpoint without credentials.
    type: str
  broker_password:
    description:
      - Password for the broker, used instead of any password in O(broker_url).
    type: str
  connect_timeout:
    description:
      - Seconds to wait for the broker to accept a connection and to answer each call.
      - On RabbitMQ, an answer that comes behind a stream of messages (a large queue being read) is waited
        for as long as data keeps arriving; the time counts from the last byte received.
      - Must be greater than zero.
    type: float
    default: 5.0
  tls_ca_file:
    description:
      - CA certificate bundle to verify the broker's TLS certificate with. Needs a C(rediss://) or C(amqps://) URL.
      - Without it, the system's trusted CAs are used. A certificate that does not verify fails the task with a message
        that says so.
    type: path
  tls_cert_file:
    description:
      - Client certificate for TLS client authentication.
    type: path
  tls_key_file:
    description:
      - Private key of O(tls_cert_file).
    type: path
  tls_verify:
    description:
      - Whether to verify the broker's TLS certificate and host name.
      - When not set, C(ssl_cert_reqs) in the URL decides, and verification is on if that is absent too.
      - Set it to V(false) only on purpose. The connection is still encrypted, but anyone in between can pose as the broker.
    type: bool
  master_name:
    description:
      - The name of the Redis master that the Sentinels watch (C(sentinel monitor NAME ...)). Required with a
        C(sentinel://) O(broker_url), and refused with any other.
      - "Celery's C(broker_transport_options={'master_name': ...})."
    type: str
  sentinel_password:
    description:
      - "Password of the Sentinels themselves (Celery's C(broker_transport_options={'sentinel_kwargs': {'password': ...}})).
        The master's password is the one in O(broker_url) or O(broker_password)."
      - Only with a C(sentinel://) O(broker_url).
    type: str
requirements:
  - redis (Python library) for a Redis broker
  - pika (Python library) for a RabbitMQ broker
notes:
  - The module talks to the broker, not to the host it runs on. Run it once per play (for example with
    C(run_once) or on the controller) rather than once per worker host.
"""

"""A worker of an older Celery that lacks a control command: its reply is said plainly (pure logic; the real
workers of Celery 5.2 to 5.7 are in tests/integration/test_celery_matrix.py)."""

from ansible_collections.celeryops.fleet.plugins.module_utils import _control


class FakeMailbox(object):
    """Hands Control.request the replies of one round, with the tickets it sent."""

    def __init__(self, answers):
        self.answers, self.sent = answers, []

    def publish(self, bodies, expires, reply):
        self.sent = bodies('oid')

    def replies(self, wait):
        out = [(body['ticket'], self.answers[body['method']]) for body in self.sent if body['method'] in self.answers]
        self.answers = {}
        return out

    def check(self, timeout, complete):
        pass


def control(answers):
    ctl = _control.Control.__new__(_control.Control)
    ctl.broker, ctl.layout, ctl.undecodable, ctl.mailbox = None, None, 0, FakeMailbox(answers)
    return ctl


def test_a_command_an_old_worker_lacks_is_said_plainly():
    # What a Celery 5.2 worker answers to revoke_by_stamped_headers (kombu's pidbox: repr of the KeyError).
    answers = {'revoke_by_stamped_headers': {'old@h': {'error': "KeyError('revoke_by_stamped_headers')"},
                                             'new@h': {'ok': 'headers {} flagged as revoked'}}}
    replies = control(answers).request({'revoke_by_stamped_headers': {'headers': {}}},
                                       _control.Expectation(['old@h', 'new@h']), timeout=1)
    first = replies.first('revoke_by_stamped_headers')
    assert first['old@h']['error'] == ("the worker has no control command revoke_by_stamped_headers, which came with "
                                       "Celery 5.3 (it answered KeyError('revoke_by_stamped_headers'))")
    assert first['new@h'] == {'ok': 'headers {} flagged as revoked'}
    assert replies.undecodable == 0


def test_other_errors_and_other_commands_stay_as_the_worker_said():
    assert _control.plain_error('pool_grow', {'error': 'pool does not support growing'}) == \
        {'error': 'pool does not support growing'}
    # A KeyError about something else is not a missing command.
    assert _control.plain_error('rate_limit', {'error': "KeyError('proj.add')"}) == {'error': "KeyError('proj.add')"}
    assert _control.plain_error('stats', {'pid': 1}) == {'pid': 1}
    assert _control.plain_error('ping', ['not', 'a', 'dict']) == ['not', 'a', 'dict']
    # A command the table does not know still says what is missing, without a version.
    assert _control.plain_error('frobnicate', {'error': 'KeyError("frobnicate")'})['error'] == \
        'the worker has no control command frobnicate (it answered KeyError("frobnicate"))'

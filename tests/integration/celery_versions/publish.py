"""Run by the Celery-version matrix with a version's own Python: sends tasks and revokes ids with that version's
Celery and kombu, so that the broker holds what that kombu writes (keys, bindings, message layout).

argv[1]: JSON {"sends": [{"task", "queue", "args", "priority", "countdown"}...], "revoke": [ids]}.
Prints JSON {"ids": [...in send order], "celery": version, "kombu": version}.
The broker and key prefix come from CELERY_BROKER_URL and FLEET_KEYPREFIX, as for the workers (PYTHONPATH: the app).
"""

import json
import sys

import celery
import kombu
from fleet_tasks import app


def main():
    plan = json.loads(sys.argv[1])
    ids = []
    with app.producer_or_acquire() as producer:
        for send in plan.get('sends', []):
            result = app.send_task(send['task'], args=send.get('args', ()), queue=send['queue'],
                                   priority=send.get('priority'), countdown=send.get('countdown'), producer=producer)
            ids.append(result.id)
    if plan.get('revoke'):
        app.control.revoke(plan['revoke'])
    app.close()
    print(json.dumps({'ids': ids, 'celery': celery.__version__, 'kombu': kombu.__version__}))


if __name__ == '__main__':
    main()

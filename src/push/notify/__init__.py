"""Notifications: a JSON event POSTed to webhooks on every deploy, rollback and removal,
and at each step of a rollout (issue 13, point 9; docs/notifications.md).

- `settings`: the `[notify]` table of skiapush.conf (webhooks, kinds, timeout, attempts)
- `events`: the event's JSON (envelope and subject fields)
- `delivery`: one webhook's bounded queue, worker thread, retries with backoff
- `signature`: the HMAC headers of a webhook with a secret
- `notifier`: `Notifier`, what push.fleet, the rollouts and the front ends call

Delivery never blocks and never fails a change, and is not persisted: see delivery.
"""

from push.notify.events import change_fields
from push.notify.notifier import CLI_FLUSH_SECONDS, DISABLED, SERVER_FLUSH_SECONDS, Notifier, TargetStats
from push.notify.settings import KINDS, NotifySettings, Webhook

__all__ = ["CLI_FLUSH_SECONDS", "DISABLED", "KINDS", "SERVER_FLUSH_SECONDS", "Notifier", "NotifySettings",
           "TargetStats", "Webhook", "change_fields"]

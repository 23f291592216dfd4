"""Dead letters: list them, show one, re-drive them to their source topic (``streamflow dead-letters``).

The consumer sends every invalid event to the dead-letter topic (:mod:`consumer.dead_letter_queue`): its
value holds the reason, the source topic/partition/offset, the key, the original value (text or
base64, cut at 64 KiB) and the original headers. A dead letter's id is its place in the
dead-letter topic, ``partition:offset``.

* :mod:`.letters` reads the dead-letter topic with a group-less reader that commits nothing, from
  the start (or from ``--since``, via ``offsets_for_times``) up to the end offsets taken when the
  command starts, so a listing ends even while the consumer adds dead letters.
* :mod:`.ledger` is the record of what was re-driven: the PostgreSQL table ``streamflow_redrives``
  (created on demand), one row per dead letter, primary key ``(dlq_topic, dlq_partition,
  dlq_offset)``, with its state (``pending`` or ``done``), the target topic/partition/offset, and
  when it was claimed and sent.
* :mod:`.redrive` sends the selected dead letters back to their source topic: the original key and
  value bytes, the original headers (``table``, ``event_timestamp``), plus ``redrive_of`` =
  ``<dead-letter topic>/<partition>/<offset>``. A re-driven event that fails again goes back to
  the dead-letter topic with its new reason; its dead letter records ``redrive_of``.

Re-driven once, never again, even after a crash midway. A redrive:

1. takes a PostgreSQL advisory lock per dead-letter topic (one redrive at a time; a crashed
   run's lock goes with its connection);
2. resolves the ``pending`` claims a crashed run left: it reads the source topics from the claim
   time (minus a minute of clock skew, via ``offsets_for_times``) to their end and looks for
   records whose ``redrive_of`` header names a pending dead letter. Found: the claim becomes
   ``done`` with that record's partition and offset (nothing is sent again). Not found: the
   crash came before the send, the claim is dropped and the dead letter can be sent;
3. claims the selected dead letters that have no row yet as ``pending``, in a committed
   transaction, before sending any (a chunk of at most ``CHUNK`` at a time);
4. sends them with the idempotent producer (acks=all: the broker's retries write each once),
   flushes, and marks each acknowledged one ``done`` with its partition and offset. One whose
   send failed stays ``pending``: the next run resolves it as in 2.

So a crash between "sent" and "recorded" leaves a ``pending`` row and a record carrying its id in
the source topic: the next run finds that record and sends nothing. What this rests on: the
re-driven record is still in its source topic when the next run looks (its retention is longer
than the gap between the crash and the next run), and the clocks of the hosts that ran the two
runs differ by less than a minute. A dead-letter topic deleted and created again starts its
offsets over: delete its rows first (``DELETE FROM streamflow_redrives WHERE dlq_topic = ...``).
"""

REDRIVE_HEADER = "redrive_of"
"""Header of an event that ``streamflow dead-letters redrive`` sent again: the id of its dead letter,
``<dead-letter topic>/<partition>/<offset>``. A re-driven event that fails again keeps it."""

"""A downstream team's consumer of lull with confluent-kafka for Python, configured as the README
shows: reads the output topic from the beginning until it has WANT batches, then a little longer
(so a repeat would show), or until the deadline; prints the batch ids it saw as one JSON line.
Used by tests/downstream.rs.

    python read.py BROKERS OUTPUT_TOPIC WANT DEADLINE_MS
"""
import json
import os
import sys
import time

from confluent_kafka import Consumer

brokers, topic, want, deadline_ms = sys.argv[1:5]
consumer = Consumer({
    "bootstrap.servers": brokers,
    "group.id": f"python-check-{os.getpid()}-{time.time()}",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "isolation.level": "read_committed",  # the default, said here as the README says it
})
consumer.subscribe([topic])
ids = []
end = time.time() + int(deadline_ms) / 1000
settle = None
while time.time() < end and (settle is None or time.time() < settle):
    msg = consumer.poll(0.5)
    if msg is None or msg.error():
        continue
    ids.append(json.loads(msg.value())["batch_id"])
    if settle is None and len(ids) >= int(want):
        settle = time.time() + 2
consumer.close()
print(json.dumps({"batch_ids": ids}))

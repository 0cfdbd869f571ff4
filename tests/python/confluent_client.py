"""Drives Sluice's built-in schema registry with Confluent's own Python client.

Run by tests/tests/schemas.rs. Arguments come from the environment:
  SR_URL, SR_CA, SR_CERT, SR_KEY  the gateway's address and an mTLS identity for a tenant
  TENANT                          that tenant's id
  OTHER_SUBJECT                   a subject of another tenant, which must stay out of reach
Checks as it goes (an assertion failure exits non-zero) and prints one JSON object: what the
Rust side checks next, including a record the AvroSerializer framed (Confluent wire format).
"""

import json
import os

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

tenant = os.environ["TENANT"]
topic = f"{tenant}.recipe"
subject = f"{topic}-value"
client = SchemaRegistryClient(
    {
        "url": os.environ["SR_URL"],
        "ssl.ca.location": os.environ["SR_CA"],
        "ssl.certificate.location": os.environ["SR_CERT"],
        "ssl.key.location": os.environ["SR_KEY"],
    }
)


def record(fields):
    return json.dumps({"type": "record", "name": "Recipe", "namespace": "com.example", "fields": fields})


V1 = record(
    [
        {"name": "dish", "type": "string", "sluice.role": "attribute"},
        {"name": "method", "type": "string", "sluice.role": "text"},
    ]
)
V2 = record(
    [
        {"name": "dish", "type": "string", "sluice.role": "attribute"},
        {"name": "method", "type": "string", "sluice.role": "text"},
        {"name": "cuisine", "type": "string", "default": "unknown", "sluice.role": "attribute"},
    ]
)
# Changes a field's type: no reader of v2 can read it.
V3_INCOMPATIBLE = record(
    [
        {"name": "dish", "type": "long"},
        {"name": "method", "type": "string", "sluice.role": "text"},
    ]
)

out = {}
v1_id = client.register_schema(subject, Schema(V1, "AVRO"))
assert client.register_schema(subject, Schema(V1, "AVRO")) == v1_id, "re-registering is a no-op"
v2_id = client.register_schema(subject, Schema(V2, "AVRO"))
assert v2_id != v1_id
latest = client.get_latest_version(subject)
assert (latest.schema_id, latest.version) == (v2_id, 2), latest
assert client.get_versions(subject) == [1, 2]
assert json.loads(client.get_schema(v1_id).schema_str)["fields"][1]["name"] == "method"
assert client.lookup_schema(subject, Schema(V1, "AVRO")).version == 1
assert subject in client.get_subjects()
assert all(s.startswith(f"{tenant}.") for s in client.get_subjects()), client.get_subjects()

assert client.test_compatibility(subject, Schema(V2, "AVRO")) is True
assert client.test_compatibility(subject, Schema(V3_INCOMPATIBLE, "AVRO")) is False
try:
    client.register_schema(subject, Schema(V3_INCOMPATIBLE, "AVRO"))
    raise AssertionError("an incompatible schema was registered")
except SchemaRegistryError as e:
    assert e.http_status_code == 409, e
    out["incompatible"] = str(e)

client.set_compatibility(subject_name=subject, level="FULL")
assert client.get_compatibility(subject) == "FULL"

# Another tenant's subject is out of reach, whatever the client asks.
other = os.environ["OTHER_SUBJECT"]
try:
    client.get_latest_version(other)
    raise AssertionError("another tenant's subject was readable")
except SchemaRegistryError as e:
    assert e.http_status_code == 404, e
try:
    client.register_schema(other, Schema(V1, "AVRO"))
    raise AssertionError("registered under another tenant's subject")
except SchemaRegistryError as e:
    assert e.http_status_code == 403, e

# A throwaway subject: soft delete, then hard delete.
scratch = f"{tenant}.scratch-value"
client.register_schema(scratch, Schema(V1, "AVRO"))
assert client.delete_subject(scratch) == [1]
assert scratch not in client.get_subjects()
assert client.delete_subject(scratch, permanent=True) == [1]

# Confluent's serializer, with the registered v1 (no auto-registration): framed bytes a Kafka
# producer would send. The Rust side ingests them as Avro binary with the schema id.
serializer = AvroSerializer(
    client, V1, conf={"auto.register.schemas": False, "use.latest.version": False}
)
framed = serializer(
    {"dish": "pancakes", "method": "Whisk flour, eggs and milk; fry thin in butter."},
    SerializationContext(topic, MessageField.VALUE),
)
out.update({"v1_id": v1_id, "v2_id": v2_id, "framed_hex": framed.hex()})
print(json.dumps(out))

//! Documents as the API takes them, and IngestBatch calls' worth of them.

use prost::Message;

use crate::avro::to_avro_json;
use crate::error::{Code, Error};
use crate::proto;
use crate::types::Document;

/// The message for a document: its fields as Avro JSON.
pub(crate) fn document_message(document: &Document) -> Result<proto::Document, Error> {
    let avro_json = to_avro_json(&document.fields, document.avro_schema.as_ref()).map_err(|e| {
        Error::new(
            Code::InvalidArgument,
            format!("document {}: {}", document.document_id, e.message()),
        )
    })?;
    Ok(proto::Document {
        document_id: document.document_id.clone(),
        payload: Some(proto::document::Payload::AvroJson(avro_json)),
        attributes: document
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        schema: document.schema.clone(),
        schema_version: document.schema_version,
        schema_id: 0,
    })
}

/// The messages in order, in groups of at most `size` documents and `max_bytes` encoded. A
/// single document larger than `max_bytes` goes alone (the gateway says whether it fits).
pub(crate) fn batches(
    documents: Vec<proto::Document>,
    size: usize,
    max_bytes: usize,
) -> Vec<Vec<proto::Document>> {
    let mut all = Vec::new();
    let mut batch = Vec::new();
    let mut used = 0;
    for document in documents {
        // Each repeated element costs its tag and length prefix too: a few bytes.
        let cost = document.encoded_len() + 8;
        if !batch.is_empty() && (batch.len() == size || used + cost > max_bytes) {
            all.push(std::mem::take(&mut batch));
            used = 0;
        }
        batch.push(document);
        used += cost;
    }
    if !batch.is_empty() {
        all.push(batch);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(documents: impl IntoIterator<Item = (String, String)>) -> Vec<proto::Document> {
        documents
            .into_iter()
            .map(|(id, text)| {
                document_message(&Document::new(id, json!({ "text": text }))).unwrap()
            })
            .collect()
    }

    #[test]
    fn batches_split_by_count_and_bytes_in_order() {
        let docs = messages((0..25).map(|i| (format!("d{i:02}"), "x".repeat(100))));
        let by_count = batches(docs.clone(), 10, 1 << 20);
        assert_eq!(
            by_count.iter().map(Vec::len).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        let ids: Vec<_> = by_count
            .iter()
            .flatten()
            .map(|d| d.document_id.clone())
            .collect();
        assert_eq!(ids, (0..25).map(|i| format!("d{i:02}")).collect::<Vec<_>>());
        let cost = docs[0].encoded_len() + 8;
        let by_bytes = batches(docs, 100, 3 * cost);
        let sizes: Vec<_> = by_bytes.iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 3, 3, 3, 3, 3, 3, 1]);
        // One document larger than the limit goes alone.
        let big = messages([
            ("big".into(), "y".repeat(1000)),
            ("s".into(), String::new()),
        ]);
        assert_eq!(
            batches(big, 10, 100)
                .iter()
                .map(Vec::len)
                .collect::<Vec<_>>(),
            [1, 1]
        );
    }

    #[test]
    fn a_document_carries_its_options() {
        let document = Document::new("a-1", json!({"body": "x", "pages": 3}))
            .with_attribute("kind", "note")
            .with_schema("article")
            .with_schema_version(2)
            .with_avro_schema(
                r#"{"type": "record", "name": "A", "fields": [
                    {"name": "body", "type": "string"}, {"name": "pages", "type": ["null", "int"]}]}"#,
            )
            .unwrap();
        let message = document_message(&document).unwrap();
        assert_eq!(message.document_id, "a-1");
        assert_eq!(message.schema, "article");
        assert_eq!(message.schema_version, 2);
        assert_eq!(message.attributes["kind"], "note");
        let Some(proto::document::Payload::AvroJson(json)) = message.payload else {
            panic!("not Avro JSON");
        };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).unwrap(),
            json!({"body": "x", "pages": {"int": 3}})
        );
        let error = document_message(&Document::new("bad", json!("text"))).unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().starts_with("document bad: "), "{error}");
    }
}

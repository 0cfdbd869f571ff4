package sluice

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"sluice/sdk/go/sluicev1"
)

// IngestionState is where an ingestion is: ACCEPTED until it ends INDEXED, FAILED or DELETED.
type IngestionState int32

// The states; a state newer than this client reads as StateUnspecified.
const (
	StateUnspecified IngestionState = 0
	StateAccepted    IngestionState = 1
	StateIndexed     IngestionState = 2
	StateFailed      IngestionState = 3
	StateDeleted     IngestionState = 4
)

func (s IngestionState) String() string {
	switch s {
	case StateAccepted:
		return "ACCEPTED"
	case StateIndexed:
		return "INDEXED"
	case StateFailed:
		return "FAILED"
	case StateDeleted:
		return "DELETED"
	}
	return "UNSPECIFIED"
}

// Finished says whether s is a final state (INDEXED, FAILED or DELETED).
func (s IngestionState) Finished() bool {
	return s == StateIndexed || s == StateFailed || s == StateDeleted
}

// Operation is what an ingestion does to its document.
type Operation int32

// The operations; one newer than this client reads as OperationUnspecified.
const (
	OperationUnspecified Operation = 0
	OperationUpsert      Operation = 1
	OperationDelete      Operation = 2
)

func (o Operation) String() string {
	switch o {
	case OperationUpsert:
		return "UPSERT"
	case OperationDelete:
		return "DELETE"
	}
	return "UNSPECIFIED"
}

// Ingestion is one document (or deletion) on its way through Sluice. The times are zero
// when unset (CompletedAt while ACCEPTED).
type Ingestion struct {
	ID            string
	DocumentID    string
	State         IngestionState
	Operation     Operation
	ChunkCount    uint32
	FailureReason string
	AcceptedAt    time.Time
	CompletedAt   time.Time
}

// Finished says whether it has ended (INDEXED, FAILED or DELETED).
func (i Ingestion) Finished() bool { return i.State.Finished() }

func timeOf(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}

func ingestionOf(m *sluicev1.Ingestion) Ingestion {
	state := IngestionState(m.GetState())
	if state < StateUnspecified || state > StateDeleted {
		state = StateUnspecified
	}
	operation := Operation(m.GetOperation())
	if operation < OperationUnspecified || operation > OperationDelete {
		operation = OperationUnspecified
	}
	return Ingestion{
		ID:            m.GetIngestionId(),
		DocumentID:    m.GetDocumentId(),
		State:         state,
		Operation:     operation,
		ChunkCount:    m.GetChunkCount(),
		FailureReason: m.GetFailureReason(),
		AcceptedAt:    timeOf(m.GetAcceptedAt()),
		CompletedAt:   timeOf(m.GetCompletedAt()),
	}
}

// IngestionEvent is what happened to an ingestion; Cursor resumes a watch after it.
type IngestionEvent struct {
	Ingestion Ingestion
	Cursor    string
	EventTime time.Time
}

func eventOf(m *sluicev1.IngestionEvent) IngestionEvent {
	return IngestionEvent{Ingestion: ingestionOf(m.GetIngestion()), Cursor: m.GetCursor(), EventTime: timeOf(m.GetEventTime())}
}

// Hit is one chunk that matched a search: its document, place, text, score and attributes.
type Hit struct {
	DocumentID string
	ChunkIndex uint32
	Text       string
	Score      float32
	Attributes map[string]string
}

func hitOf(m *sluicev1.SearchHit) Hit {
	attributes := make(map[string]string, len(m.GetAttributes()))
	for k, v := range m.GetAttributes() {
		attributes[k] = v
	}
	return Hit{DocumentID: m.GetDocumentId(), ChunkIndex: m.GetChunkIndex(), Text: m.GetText(), Score: m.GetScore(), Attributes: attributes}
}

// Schema is one registered version of a tenant's document schema.
type Schema struct {
	Name            string
	Subject         string
	Version         int32
	ID              uint32
	Definition      string
	TextField       string
	AttributeFields []string
}

func schemaOf(m *sluicev1.Schema) Schema {
	return Schema{
		Name:            m.GetName(),
		Subject:         m.GetSubject(),
		Version:         m.GetVersion(),
		ID:              m.GetId(),
		Definition:      m.GetDefinition(),
		TextField:       m.GetTextField(),
		AttributeFields: append([]string(nil), m.GetAttributeFields()...),
	}
}

// Document is a document to ingest: its id, its fields (the Avro record: a map with string
// keys or a struct, see AvroJSON) and options.
//
// Schema names one of the tenant's schemas (empty: the gateway's default, "document") and
// SchemaVersion its version (0: the latest). AvroSchema, the schema's Avro definition (JSON),
// makes unions explicit in the Avro JSON.
type Document struct {
	ID            string
	Fields        any
	Attributes    map[string]string
	Schema        string
	SchemaVersion int32
	AvroSchema    string
}

func (d Document) message() (*sluicev1.Document, error) {
	avro, err := AvroJSON(d.Fields, d.AvroSchema)
	if err != nil {
		return nil, err
	}
	return &sluicev1.Document{
		DocumentId:    d.ID,
		Payload:       &sluicev1.Document_AvroJson{AvroJson: avro},
		Attributes:    d.Attributes,
		Schema:        d.Schema,
		SchemaVersion: d.SchemaVersion,
	}, nil
}

package sluice

// Avro JSON from Go values, without and with the document's schema.

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// uuidLike is a UUID type as UUID packages have them: an array with a text form.
type uuidLike [16]byte

func (u uuidLike) MarshalText() ([]byte, error) {
	return []byte("00000000-0000-0000-0000-0000000000" + string("0123456789abcdef"[u[15]>>4]) + string("0123456789abcdef"[u[15]&15])), nil
}

type point struct {
	X int `json:"x"`
	Y int `avro:"y" json:"why"`
}

type base struct {
	Source string `json:"source"`
}

type article struct {
	base
	Title    *string   `json:"title"`
	Text     string    `json:"text"`
	Tags     []string  `json:"tags,omitempty"`
	Internal string    `json:"-"`
	private  string    //nolint:unused // left out
	Language string    `json:"language,omitempty"`
	Created  time.Time `json:"created_at"`
}

// same says whether got (the encoder's JSON) is the JSON want.
func same(t *testing.T, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("not JSON: %s", got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad want: %s", want)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func avro(t *testing.T, fields any, schema string) string {
	t.Helper()
	out, err := AvroJSON(fields, schema)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPlainValuesMapToJSON(t *testing.T) {
	moment := time.Date(2024, 1, 1, 0, 0, 0, 1_000_000, time.UTC)
	var nilMap map[string]any
	got := avro(t, map[string]any{
		"text":   "Tides follow the moon.",
		"title":  nil,
		"count":  3,
		"big":    uint64(math.MaxUint64),
		"ratio":  0.5,
		"ok":     true,
		"tags":   [2]string{"a", "b"},
		"raw":    []byte{0x00, 0x7f, 0xff},
		"at":     moment,
		"id":     uuidLike{15: 1},
		"point":  point{1, 2},
		"ptr":    &point{3, 4},
		"nested": map[string]any{"k": []any{1, map[string]any{"z": nil}}},
		"none":   nilMap,
		"number": json.Number("12.5"),
		"json":   json.RawMessage(` {"as": "is"} `),
	}, "")
	same(t, got, `{
		"text": "Tides follow the moon.", "title": null, "count": 3, "big": 18446744073709551615,
		"ratio": 0.5, "ok": true, "tags": ["a", "b"], "raw": "\u0000\u007f\u00ff",
		"at": 1704067200001, "id": "00000000-0000-0000-0000-000000000001",
		"point": {"x": 1, "y": 2}, "ptr": {"x": 3, "y": 4}, "nested": {"k": [1, {"z": null}]},
		"none": null, "number": 12.5, "json": {"as": "is"}}`)
	// Map keys in order: the same document is the same bytes.
	if !strings.HasPrefix(got, `{"at":1704067200001,"big":`) {
		t.Error(got)
	}
}

func TestStructsAreRecordsByTheirTags(t *testing.T) {
	title := "Tides"
	got := avro(t, article{base: base{"notes"}, Title: &title, Text: "t", Internal: "x", private: "y"}, "")
	if got != `{"source":"notes","title":"Tides","text":"t","created_at":-62135596800000}` {
		t.Error(got)
	}
	got = avro(t, &article{Text: "t", Tags: []string{"a"}, Language: "en", Created: time.UnixMilli(5)}, "")
	same(t, got, `{"source":"","title":null,"text":"t","tags":["a"],"language":"en","created_at":5}`)
}

func TestNonASCIITextStaysText(t *testing.T) {
	if got := avro(t, map[string]string{"text": "Gezeiten — 潮 <&>"}, ""); got != `{"text":"Gezeiten — 潮 <&>"}` {
		t.Error(got)
	}
}

func TestWhatHasNoEncodingIsNamedByItsPath(t *testing.T) {
	for _, c := range []struct {
		fields  any
		problem string
	}{
		{map[string]any{"x": math.NaN()}, "x: NaN has no JSON encoding"},
		{map[string]any{"m": map[int]string{1: "a"}}, "m: keys must be strings"},
		{map[string]any{"c": make(chan int)}, "c: chan int has no Avro JSON encoding"},
		{map[string]any{"a": []any{func() {}}}, "a[0]: func() has no Avro JSON encoding"},
		{map[string]any{"p": map[string]any{"q": complex(1, 2)}}, "p.q: complex128 has no Avro JSON encoding"},
	} {
		if _, err := AvroJSON(c.fields, ""); err == nil || !strings.Contains(err.Error(), c.problem) {
			t.Errorf("%v: %v, want %q", c.fields, err, c.problem)
		}
	}
}

func TestADocumentMustBeAMapOrAStruct(t *testing.T) {
	for _, fields := range []any{[]string{"text"}, "text", nil, 5} {
		if _, err := AvroJSON(fields, ""); err == nil {
			t.Errorf("%v is a document", fields)
		}
	}
}

func defaultSchema(t *testing.T) string {
	definition, err := os.ReadFile(filepath.Join("..", "..", "schemas", "document.avsc"))
	if err != nil {
		t.Fatal(err)
	}
	return string(definition)
}

func TestWithTheDefaultSchemaUnionsAreTagged(t *testing.T) {
	moment := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	got := avro(t, map[string]any{"title": "Tides", "text": "The moon pulls the sea.", "language": nil, "tags": []string{"sea"}, "created_at": moment}, defaultSchema(t))
	same(t, got, `{"title": {"string": "Tides"}, "text": "The moon pulls the sea.", "language": null, "tags": ["sea"], "created_at": {"long": 1704067200000}}`)
	// Fields left out stay out, for their defaults.
	same(t, avro(t, map[string]any{"text": "only text"}, defaultSchema(t)), `{"text": "only text"}`)
	// A struct too.
	got = avro(t, article{Text: "x", Created: moment, Language: "en"}, defaultSchema(t))
	same(t, got, `{"source": {"string": ""}, "title": null, "text": "x", "language": {"string": "en"}, "created_at": {"long": 1704067200000}}`)
}

const articleSchema = `{
  "type": "record", "name": "Article", "namespace": "com.example",
  "fields": [
    {"name": "body", "type": "string"},
    {"name": "n", "type": ["null", "int", "string"]},
    {"name": "when", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
    {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}]},
    {"name": "kind", "type": ["null", {"type": "enum", "name": "Kind", "symbols": ["NEWS", "NOTE"]}]},
    {"name": "author", "type": ["null", {"type": "record", "name": "Person", "namespace": "org.people",
                                         "fields": [{"name": "name", "type": "string"},
                                                    {"name": "nick", "type": ["null", "string"]}]}]},
    {"name": "editor", "type": ["null", "org.people.Person"]},
    {"name": "related", "type": {"type": "array", "items": ["null", "Kind"]}},
    {"name": "scores", "type": {"type": "map", "values": ["null", "double"]}},
    {"name": "blob", "type": ["null", "bytes"]}
  ]
}`

type person struct {
	Name string `json:"name"`
}

func TestNamedTypesNestedUnionsAndLogicalTypes(t *testing.T) {
	got := avro(t, map[string]any{
		"body":    "b",
		"n":       5,
		"when":    time.Unix(1, 0),
		"day":     time.Date(1970, 1, 11, 23, 0, 0, 0, time.FixedZone("", -5*3600)),
		"kind":    "NEWS",
		"author":  map[string]any{"name": "Ada", "nick": "ada"},
		"editor":  person{"Bo"},
		"related": []any{"NOTE", nil},
		"scores":  map[string]any{"a": 1.5, "b": nil, "c": 2},
		"blob":    []byte{1},
	}, articleSchema)
	same(t, got, `{
		"body": "b", "n": {"int": 5}, "when": {"long": 1000000}, "day": {"int": 10},
		"kind": {"com.example.Kind": "NEWS"},
		"author": {"org.people.Person": {"name": "Ada", "nick": {"string": "ada"}}},
		"editor": {"org.people.Person": {"name": "Bo"}},
		"related": [{"com.example.Kind": "NOTE"}, null],
		"scores": {"a": {"double": 1.5}, "b": null, "c": {"double": 2}},
		"blob": {"bytes": "\u0001"}}`)
	// A struct is a record, not an Avro map.
	same(t, avro(t, map[string]any{"scores": point{1, 2}}, articleSchema), `{"scores": {"x": 1, "y": 2}}`)
}

func TestTheFirstBranchThatFitsWinsAndBoolsAreNotInts(t *testing.T) {
	same(t, avro(t, map[string]any{"n": "five"}, articleSchema), `{"n": {"string": "five"}}`)
	// No branch fits a bool: passed through for the gateway to name the field.
	same(t, avro(t, map[string]any{"n": true}, articleSchema), `{"n": true}`)
	same(t, avro(t, map[string]any{"n": json.Number("7")}, articleSchema), `{"n": {"int": 7}}`)
}

func TestWhatDoesNotFitTheSchemaIsPassedThroughForTheGatewayToReport(t *testing.T) {
	same(t, avro(t, map[string]any{"body": 3, "unknown": "x", "kind": "OTHER"}, articleSchema), `{"body": 3, "unknown": "x", "kind": "OTHER"}`)
	if _, err := AvroJSON(map[string]any{"n": 1}, "{not json"); err == nil {
		t.Error("a schema that is not JSON is taken")
	}
}

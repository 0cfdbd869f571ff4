package sluice

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// AvroJSON is the Avro JSON encoding of a document given as a map with string keys or a
// struct (or a pointer to one).
//
// Values map to JSON by their Go type: nil pointers, interfaces, maps and slices become null;
// []byte the Avro JSON byte string (one code point per byte); time.Time milliseconds since the
// epoch (timestamp-millis; microseconds for a timestamp-micros field, days for a date field);
// encoding.TextMarshaler values (UUIDs, for one) their text; json.Number a number and
// json.RawMessage itself; maps with string keys (in key order) and structs (in field order)
// records; slices and arrays lists. A struct field is named by its `avro` tag, else its
// `json` tag, else its Go name; "-" leaves it out and the json tag's omitempty leaves out a
// zero value; embedded structs are flattened.
//
// Without schema, values are written as they are (the gateway takes a bare value for a union
// when exactly one of its branches fits, as for ["null", "string"]). With schema, the Avro
// schema (JSON) the document is written in, unions are written as Avro's JSON encoding has
// them, {"<branch type>": value}, so that no union is ambiguous. Either way the gateway
// validates the document and names each bad field by its path; values the encoder cannot
// place are passed through for it to report.
func AvroJSON(fields any, schema string) (string, error) {
	value, err := normalize(reflect.ValueOf(fields), "")
	if err != nil {
		return "", err
	}
	if _, ok := value.(*object); !ok {
		return "", fmt.Errorf("sluice: a document is a map of field names to values or a struct, not %T", fields)
	}
	var out any
	if schema == "" {
		out = plain(value, unitMillis)
	} else {
		var parsed any
		if err := json.Unmarshal([]byte(schema), &parsed); err != nil {
			return "", fmt.Errorf("sluice: the Avro schema is not JSON: %w", err)
		}
		enc := newEncoder(parsed)
		out = enc.encode(parsed, value, "")
	}
	var buf bytes.Buffer
	if err := writeJSON(&buf, out); err != nil {
		return "", err
	}
	return buf.String(), nil
}

// The values a Go value is normalized into before encoding.
type (
	// object is a record or map: keys in order.
	object struct {
		keys     []string
		values   []any
		isStruct bool // a struct fits records, not Avro maps
	}
	avroBytes []byte
	avroTime  time.Time
	// Already JSON: written as it is, fitting no union branch.
	rawJSON []byte
	// A json.Number: fits int and long when it is an integer.
	number string
)

var (
	timeType       = reflect.TypeOf(time.Time{})
	rawType        = reflect.TypeOf(json.RawMessage(nil))
	numberType     = reflect.TypeOf(json.Number(""))
	marshalerType  = reflect.TypeOf((*encoding.TextMarshaler)(nil)).Elem()
	errNotFinitely = errors.New("has no JSON encoding")
)

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func where(path string) string {
	if path == "" {
		return "document"
	}
	return path
}

// normalize turns a Go value into nil, bool, int64, uint64, float64, number, string,
// avroBytes, avroTime, rawJSON, []any or *object.
func normalize(v reflect.Value, path string) (any, error) {
	for v.IsValid() && (v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface) {
		if v.IsNil() {
			return nil, nil
		}
		if v.Kind() == reflect.Pointer && v.Type().Implements(marshalerType) && v.Elem().Type() != timeType {
			break
		}
		v = v.Elem()
	}
	if !v.IsValid() {
		return nil, nil
	}
	switch t := v.Type(); {
	case t == timeType:
		return avroTime(v.Interface().(time.Time)), nil
	case t == rawType:
		return rawJSON(v.Bytes()), nil
	case t == numberType:
		return number(v.String()), nil
	case t.Implements(marshalerType):
		if v.Kind() == reflect.Pointer && v.IsNil() {
			return nil, nil
		}
		text, err := v.Interface().(encoding.TextMarshaler).MarshalText()
		if err != nil {
			return nil, fmt.Errorf("sluice: %s: %w", where(path), err)
		}
		return string(text), nil
	}
	switch v.Kind() {
	case reflect.Bool:
		return v.Bool(), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return v.Int(), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return v.Uint(), nil
	case reflect.Float32, reflect.Float64:
		f := v.Float()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("sluice: %s: %v %w", where(path), f, errNotFinitely)
		}
		return f, nil
	case reflect.String:
		return v.String(), nil
	case reflect.Slice, reflect.Array:
		if v.Kind() == reflect.Slice && v.IsNil() {
			return nil, nil
		}
		if v.Type().Elem().Kind() == reflect.Uint8 && v.Kind() == reflect.Slice {
			return avroBytes(v.Bytes()), nil
		}
		out := make([]any, v.Len())
		for i := range out {
			item, err := normalize(v.Index(i), fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			out[i] = item
		}
		return out, nil
	case reflect.Map:
		if v.IsNil() {
			return nil, nil
		}
		if v.Type().Key().Kind() != reflect.String {
			return nil, fmt.Errorf("sluice: %s: keys must be strings, not %s", where(path), v.Type().Key())
		}
		keys := make([]string, 0, v.Len())
		for _, k := range v.MapKeys() {
			keys = append(keys, k.String())
		}
		sort.Strings(keys)
		out := &object{}
		for _, k := range keys {
			item, err := normalize(v.MapIndex(reflect.ValueOf(k).Convert(v.Type().Key())), join(path, k))
			if err != nil {
				return nil, err
			}
			out.keys = append(out.keys, k)
			out.values = append(out.values, item)
		}
		return out, nil
	case reflect.Struct:
		out := &object{isStruct: true}
		return out, addFields(out, v, path)
	}
	return nil, fmt.Errorf("sluice: %s: %s has no Avro JSON encoding", where(path), v.Type())
}

func addFields(out *object, v reflect.Value, path string) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, omitEmpty, named := fieldName(f)
		if name == "-" {
			continue
		}
		if f.Anonymous && !named && f.Type.Kind() == reflect.Struct {
			if err := addFields(out, v.Field(i), path); err != nil {
				return err
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		if omitEmpty && v.Field(i).IsZero() {
			continue
		}
		duplicate := false
		for _, k := range out.keys {
			duplicate = duplicate || k == name
		}
		if duplicate {
			continue
		}
		item, err := normalize(v.Field(i), join(path, name))
		if err != nil {
			return err
		}
		out.keys = append(out.keys, name)
		out.values = append(out.values, item)
	}
	return nil
}

// fieldName is a struct field's name in the record: its avro tag, its json tag, or its own.
func fieldName(f reflect.StructField) (name string, omitEmpty, tagged bool) {
	if tag, ok := f.Tag.Lookup("avro"); ok {
		name, _, _ = strings.Cut(tag, ",")
		if name != "" {
			return name, false, true
		}
	}
	if tag, ok := f.Tag.Lookup("json"); ok {
		var options string
		name, options, _ = strings.Cut(tag, ",")
		omitEmpty = strings.Contains(","+options+",", ",omitempty,")
		if name != "" {
			return name, omitEmpty, true
		}
	}
	return f.Name, omitEmpty, false
}

type timeUnit int

const (
	unitMillis timeUnit = iota
	unitMicros
	unitDays
)

// plain is a normalized value as JSON, by its Go type alone.
func plain(value any, unit timeUnit) any {
	switch v := value.(type) {
	case avroBytes:
		runes := make([]rune, len(v))
		for i, b := range v {
			runes[i] = rune(b)
		}
		return string(runes)
	case avroTime:
		t := time.Time(v)
		switch unit {
		case unitMicros:
			return t.UnixMicro()
		case unitDays: // the calendar day in t's own location
			midnight := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC).Unix()
			days := midnight / 86400
			if midnight < 0 && midnight%86400 != 0 {
				days--
			}
			return days
		}
		return t.UnixMilli()
	case []any:
		out := make([]any, len(v))
		for i, item := range v {
			out[i] = plain(item, unitMillis)
		}
		return out
	case *object:
		out := &object{keys: v.keys, values: make([]any, len(v.values))}
		for i, item := range v.values {
			out.values[i] = plain(item, unitMillis)
		}
		return out
	}
	return value
}

// writeJSON writes what plain and the encoder make: compact, HTML characters as they are.
func writeJSON(buf *bytes.Buffer, value any) error {
	switch v := value.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		buf.WriteString(strconv.FormatBool(v))
	case int64:
		buf.WriteString(strconv.FormatInt(v, 10))
	case uint64:
		buf.WriteString(strconv.FormatUint(v, 10))
	case float64:
		text, err := json.Marshal(v)
		if err != nil {
			return err
		}
		buf.Write(text)
	case number:
		if !json.Valid([]byte(v)) {
			return fmt.Errorf("sluice: %q is not a JSON number", string(v))
		}
		buf.WriteString(string(v))
	case rawJSON:
		if !json.Valid(v) {
			return errors.New("sluice: a json.RawMessage value is not valid JSON")
		}
		buf.Write(bytes.TrimSpace(v))
	case string:
		writeString(buf, v)
	case []any:
		buf.WriteByte('[')
		for i, item := range v {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeJSON(buf, item); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case *object:
		buf.WriteByte('{')
		for i, key := range v.keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeString(buf, key)
			buf.WriteByte(':')
			if err := writeJSON(buf, v.values[i]); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	default:
		return fmt.Errorf("sluice: cannot write %T as JSON", value)
	}
	return nil
}

func writeString(buf *bytes.Buffer, s string) {
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	buf.Truncate(buf.Len() - 1)
}

var (
	primitives = map[string]bool{"null": true, "boolean": true, "int": true, "long": true, "float": true, "double": true, "bytes": true, "string": true}
	named      = map[string]bool{"record": true, "error": true, "enum": true, "fixed": true}
)

// encoder walks a value along its schema, writing unions as {"<branch>": value}.
type encoder struct {
	names     map[string]map[string]any
	fullnames map[uintptr]string // named schema (its map) -> its full name
}

func identity(m map[string]any) uintptr { return reflect.ValueOf(m).Pointer() }

func newEncoder(schema any) *encoder {
	e := &encoder{names: map[string]map[string]any{}, fullnames: map[uintptr]string{}}
	e.collect(schema, "")
	return e
}

func fullname(name, namespace string) string {
	if strings.Contains(name, ".") || namespace == "" {
		return name
	}
	return namespace + "." + name
}

func namespaceOf(fullname string) string {
	if i := strings.LastIndex(fullname, "."); i >= 0 {
		return fullname[:i]
	}
	return ""
}

func (e *encoder) collect(schema any, namespace string) {
	switch s := schema.(type) {
	case []any:
		for _, branch := range s {
			e.collect(branch, namespace)
		}
	case map[string]any:
		kind, _ := s["type"].(string)
		if name, ok := s["name"].(string); ok && named[kind] {
			ns := namespace
			if given, ok := s["namespace"].(string); ok {
				ns = given
			}
			full := fullname(name, ns)
			e.names[full] = s
			e.fullnames[identity(s)] = full
			namespace = namespaceOf(full)
		}
		if fields, ok := s["fields"].([]any); ok {
			for _, f := range fields {
				if field, ok := f.(map[string]any); ok {
					e.collect(field["type"], namespace)
				}
			}
		}
		for _, key := range []string{"items", "values"} {
			if inner, ok := s[key]; ok {
				e.collect(inner, namespace)
			}
		}
		switch s["type"].(type) {
		case []any, map[string]any:
			e.collect(s["type"], namespace)
		}
	}
}

// resolve is what a (possibly named, possibly wrapped) schema is, and the namespace inside it.
func (e *encoder) resolve(schema any, namespace string) (any, string) {
	for i := 0; i < 64; i++ { // bounded: a name cannot refer to itself through wrappers forever
		if s, ok := schema.(string); ok && !primitives[s] {
			found, ok := e.names[fullname(s, namespace)]
			if !ok {
				found, ok = e.names[s]
			}
			if !ok {
				return schema, namespace
			}
			schema = found
			continue
		}
		if m, ok := schema.(map[string]any); ok {
			kind, isString := m["type"].(string)
			_, isList := m["type"].([]any)
			_, isMap := m["type"].(map[string]any)
			if isList || isMap || !(isString && (primitives[kind] || named[kind] || kind == "array" || kind == "map")) {
				schema = m["type"]
				continue
			}
		}
		break
	}
	if m, ok := schema.(map[string]any); ok {
		if full, ok := e.fullnames[identity(m)]; ok {
			namespace = namespaceOf(full)
		}
	}
	return schema, namespace
}

// typeName is the name Avro's JSON encoding tags a resolved union branch with.
func (e *encoder) typeName(schema any) string {
	switch s := schema.(type) {
	case string:
		return s
	case map[string]any:
		if full, ok := e.fullnames[identity(s)]; ok {
			return full
		}
		kind, _ := s["type"].(string)
		return kind
	}
	return ""
}

func isInteger(value any) bool {
	switch v := value.(type) {
	case int64, uint64:
		return true
	case number:
		_, err := strconv.ParseInt(string(v), 10, 64)
		return err == nil
	}
	return false
}

func (e *encoder) fits(schema any, value any, namespace string) bool {
	schema, namespace = e.resolve(schema, namespace)
	var kind, logical string
	var m map[string]any
	switch s := schema.(type) {
	case string:
		kind = s
	case map[string]any:
		m = s
		kind, _ = s["type"].(string)
		logical, _ = s["logicalType"].(string)
	default: // a union directly inside a union is not Avro, nor is anything else here
		return false
	}
	_, isBool := value.(bool)
	_, isTime := value.(avroTime)
	switch kind {
	case "null":
		return value == nil
	case "boolean":
		return isBool
	case "int", "long":
		return isInteger(value) || (isTime && (kind == "long" || logical == "date"))
	case "float", "double":
		switch value.(type) {
		case int64, uint64, float64, number:
			return true
		}
		return false
	case "bytes", "fixed":
		_, ok := value.(avroBytes)
		return ok
	case "string":
		_, ok := value.(string)
		return ok
	case "enum":
		symbol, ok := value.(string)
		symbols, _ := m["symbols"].([]any)
		for _, s := range symbols {
			if ok && s == symbol {
				return true
			}
		}
		return false
	case "array":
		_, ok := value.([]any)
		return ok
	case "map":
		o, ok := value.(*object)
		return ok && !o.isStruct
	case "record", "error":
		o, ok := value.(*object)
		if !ok {
			return false
		}
		names := map[string]bool{}
		fields, _ := m["fields"].([]any)
		for _, f := range fields {
			if field, ok := f.(map[string]any); ok {
				if name, ok := field["name"].(string); ok {
					names[name] = true
				}
			}
		}
		for _, key := range o.keys {
			if !names[key] {
				return false
			}
		}
		return true
	}
	return false
}

func (e *encoder) encode(schema any, value any, namespace string) any {
	if branches, ok := schema.([]any); ok {
		return e.union(branches, value, namespace)
	}
	schema, namespace = e.resolve(schema, namespace)
	if branches, ok := schema.([]any); ok {
		return e.union(branches, value, namespace)
	}
	m, ok := schema.(map[string]any)
	if !ok || !e.fits(m, value, namespace) {
		return plain(value, unitMillis)
	}
	switch m["type"] {
	case "record", "error":
		record := value.(*object)
		types := map[string]any{}
		fields, _ := m["fields"].([]any)
		for _, f := range fields {
			if field, ok := f.(map[string]any); ok {
				if name, ok := field["name"].(string); ok {
					types[name] = field["type"]
				}
			}
		}
		out := &object{keys: record.keys, values: make([]any, len(record.values))}
		for i, key := range record.keys {
			out.values[i] = e.encode(types[key], record.values[i], namespace)
		}
		return out
	case "array":
		items := value.([]any)
		out := make([]any, len(items))
		for i, item := range items {
			out[i] = e.encode(m["items"], item, namespace)
		}
		return out
	case "map":
		entries := value.(*object)
		out := &object{keys: entries.keys, values: make([]any, len(entries.values))}
		for i := range entries.keys {
			out.values[i] = e.encode(m["values"], entries.values[i], namespace)
		}
		return out
	}
	switch m["logicalType"] {
	case "timestamp-micros":
		return plain(value, unitMicros)
	case "date":
		return plain(value, unitDays)
	}
	return plain(value, unitMillis)
}

func (e *encoder) union(branches []any, value any, namespace string) any {
	if value == nil {
		return nil
	}
	for _, branch := range branches {
		if e.fits(branch, value, namespace) {
			resolved, _ := e.resolve(branch, namespace)
			return &object{keys: []string{e.typeName(resolved)}, values: []any{e.encode(branch, value, namespace)}}
		}
	}
	return plain(value, unitMillis)
}

package sluice

// google.rpc details -> *Error.

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/golang/protobuf/ptypes"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestBadRequestFieldPaths(t *testing.T) {
	r := &refusal{code: codes.InvalidArgument, message: "documents[3].avro_json.tags[1]: expected string, found number",
		fields: [][2]string{{"documents[3].avro_json.tags[1]", "expected string, found number"}, {"documents[4].document_id", "required"}}}
	e := ErrorFromStatus(r.status())
	want := []FieldViolation{{"documents[3].avro_json.tags[1]", "expected string, found number"}, {"documents[4].document_id", "required"}}
	if e.Code != codes.InvalidArgument || !reflect.DeepEqual(e.FieldViolations, want) || e.RetryInfo {
		t.Errorf("%#v", e)
	}
	if e.Error() != "INVALID_ARGUMENT: documents[3].avro_json.tags[1]: expected string, found number" {
		t.Error(e.Error())
	}
}

func TestQuotaFailureWithRetryInfo(t *testing.T) {
	r := &refusal{code: codes.ResourceExhausted, message: "over documents_per_second", retryDelay: 250 * time.Millisecond, quota: "documents_per_second"}
	e := ErrorFromStatus(r.status())
	if !reflect.DeepEqual(e.QuotaViolations, []QuotaViolation{{"documents_per_second", "over"}}) || !e.RetryInfo || e.RetryDelay != 250*time.Millisecond {
		t.Errorf("%#v", e)
	}
	// The status as received, details included.
	if details := status.Convert(e).Details(); len(details) != 2 {
		t.Errorf("%d details", len(details))
	}
}

func TestPreconditionFailure(t *testing.T) {
	failure := &errdetails.PreconditionFailure{Violations: []*errdetails.PreconditionFailure_Violation{{Type: "COMPATIBILITY", Subject: "article", Description: "field removed"}}}
	st, err := status.New(codes.FailedPrecondition, "incompatible").WithDetails(failure)
	if err != nil {
		t.Fatal(err)
	}
	e := ErrorFromStatus(st)
	if !reflect.DeepEqual(e.PreconditionViolations, []PreconditionViolation{{"COMPATIBILITY", "article", "field removed"}}) {
		t.Errorf("%#v", e)
	}
}

func TestCodesAndTheStatusInterface(t *testing.T) {
	e := ErrorFromStatus(status.New(codes.Unavailable, "down"))
	if status.Code(e) != codes.Unavailable || e.Error() != "UNAVAILABLE: down" {
		t.Error(e)
	}
	if got := ErrorFromStatus(status.New(codes.Canceled, "stop")).Error(); got != "CANCELLED: stop" {
		t.Error(got)
	}
	// The gRPC error is behind it.
	var wrapped interface{ GRPCStatus() *status.Status }
	if !errors.As(errors.Unwrap(e), &wrapped) || wrapped.GRPCStatus().Message() != "down" {
		t.Error("no status error behind it")
	}
	if c := asError(context.DeadlineExceeded); c.Code != codes.DeadlineExceeded || !errors.Is(c, context.DeadlineExceeded) {
		t.Error(c)
	}
	if c := asError(errors.New("odd")); c.Code != codes.Unknown {
		t.Error(c)
	}
}

func TestUnreadableDetailsAreIgnored(t *testing.T) {
	proto := &spb.Status{Code: int32(codes.Unavailable), Message: "down"}
	junk, _ := ptypes.MarshalAny(&errdetails.DebugInfo{Detail: "not one we read"})
	broken := &anypb.Any{TypeUrl: "type.googleapis.com/google.rpc.RetryInfo", Value: []byte{0xff, 0xff, 0xff}}
	proto.Details = append(proto.Details, junk, broken)
	e := ErrorFromStatus(status.FromProto(proto))
	if e.Code != codes.Unavailable || e.RetryInfo || e.Message != "down" {
		t.Errorf("%#v", e)
	}
}

func TestTheDeadlineOfAWaitingIngestNamesTheIngestion(t *testing.T) {
	message := "ingestion 01a2-ff is accepted (durably in Kafka) but not finished yet; follow it with WatchIngestions or GetIngestion"
	if e := ErrorFromStatus(status.New(codes.DeadlineExceeded, message)); e.IngestionID != "01a2-ff" {
		t.Error(e.IngestionID)
	}
	if e := ErrorFromStatus(status.New(codes.DeadlineExceeded, "Deadline Exceeded")); e.IngestionID != "" {
		t.Error(e.IngestionID)
	}
}

package sluice

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/golang/protobuf/ptypes"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FieldViolation is one bad field of a request (google.rpc.BadRequest), e.g.
// documents[3].document_id.
type FieldViolation struct {
	Field       string
	Description string
}

// QuotaViolation is one quota that was hit (google.rpc.QuotaFailure), e.g.
// documents_per_second.
type QuotaViolation struct {
	Subject     string
	Description string
}

// PreconditionViolation is one failed precondition (google.rpc.PreconditionFailure), e.g. of
// type COMPATIBILITY for an incompatible schema.
type PreconditionViolation struct {
	Type        string
	Subject     string
	Description string
}

// Error is a call the gateway (or the transport) refused, with the google.rpc details it sent.
//
// Code says what kind of refusal it is: InvalidArgument (FieldViolations names each bad field
// by its path in the request), ResourceExhausted (QuotaViolations; RetryInfo when waiting
// helps), FailedPrecondition (PreconditionViolations, e.g. an incompatible schema),
// Unavailable and Aborted (retried automatically), DeadlineExceeded (for a Wait call,
// IngestionID names the accepted ingestion to keep following), OutOfRange (a watch cursor
// older than the gateway keeps), NotFound, PermissionDenied, Unauthenticated and so on.
//
// Error implements GRPCStatus, so status.Code(err) and status.FromError(err) work on it.
type Error struct {
	Code    codes.Code
	Message string

	FieldViolations        []FieldViolation
	QuotaViolations        []QuotaViolation
	PreconditionViolations []PreconditionViolation
	// RetryInfo says the gateway sent a google.rpc.RetryInfo: waiting RetryDelay helps.
	RetryInfo  bool
	RetryDelay time.Duration
	// IngestionID: the ingestion a Wait call names when its deadline passed first.
	IngestionID string
	// Accepted: for IngestMany, the ingestions of the batches accepted before the one that
	// failed.
	Accepted []Ingestion

	cause  error
	status *status.Status // as received, details included
}

func (e *Error) Error() string { return codeName(e.Code) + ": " + e.Message }

// Unwrap returns the gRPC status error (or the context's error) behind e.
func (e *Error) Unwrap() error { return e.cause }

// GRPCStatus is e as a gRPC status: as the gateway sent it (details included), else its code
// and message.
func (e *Error) GRPCStatus() *status.Status {
	if e.status != nil && e.status.Code() == e.Code {
		return e.status
	}
	return status.New(e.Code, e.Message)
}

// codeName is a code as the gateway's messages and the Python client spell it: NOT_FOUND.
func codeName(code codes.Code) string {
	if int(code) < len(codeNames) {
		return codeNames[code]
	}
	return code.String()
}

var codeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
	"UNAUTHENTICATED",
}

// How a wait call that ran out of time names its ingestion (IngestRequest.wait).
var acceptedIngestion = regexp.MustCompile(`\bingestion (\S+) is accepted\b`)

// ErrorFromStatus is the Error for a gRPC status, with the google.rpc details it carries.
// Tolerant: details it cannot read are ignored (the code and message still tell the story).
func ErrorFromStatus(st *status.Status) *Error {
	e := &Error{Code: st.Code(), Message: st.Message(), cause: st.Err(), status: st}
	for _, packed := range st.Proto().GetDetails() {
		var bad errdetails.BadRequest
		var quota errdetails.QuotaFailure
		var precondition errdetails.PreconditionFailure
		var retry errdetails.RetryInfo
		switch {
		case ptypes.Is(packed, &bad) && ptypes.UnmarshalAny(packed, &bad) == nil:
			for _, v := range bad.GetFieldViolations() {
				e.FieldViolations = append(e.FieldViolations, FieldViolation{v.GetField(), v.GetDescription()})
			}
		case ptypes.Is(packed, &quota) && ptypes.UnmarshalAny(packed, &quota) == nil:
			for _, v := range quota.GetViolations() {
				e.QuotaViolations = append(e.QuotaViolations, QuotaViolation{v.GetSubject(), v.GetDescription()})
			}
		case ptypes.Is(packed, &precondition) && ptypes.UnmarshalAny(packed, &precondition) == nil:
			for _, v := range precondition.GetViolations() {
				e.PreconditionViolations = append(e.PreconditionViolations,
					PreconditionViolation{v.GetType(), v.GetSubject(), v.GetDescription()})
			}
		case ptypes.Is(packed, &retry) && ptypes.UnmarshalAny(packed, &retry) == nil:
			d := retry.GetRetryDelay()
			e.RetryInfo = true
			e.RetryDelay = time.Duration(d.GetSeconds())*time.Second + time.Duration(d.GetNanos())
		}
	}
	if e.Code == codes.DeadlineExceeded {
		if m := acceptedIngestion.FindStringSubmatch(e.Message); m != nil {
			e.IngestionID = m[1]
		}
	}
	return e
}

// asError is err as an *Error: itself, a gRPC status error with its details, or a context
// error as Canceled or DeadlineExceeded (errors.Is(err, context.Canceled) still holds).
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		e := ErrorFromStatus(status.FromContextError(err))
		e.cause = err
		return e
	}
	if st, ok := status.FromError(err); ok {
		return ErrorFromStatus(st)
	}
	return &Error{Code: codes.Unknown, Message: err.Error(), cause: err}
}

// WaitTimeout is what WaitFor returns when its deadline passes first: Finished has the
// ingestions that ended, Pending the ids of the rest. It unwraps to an *Error with code
// DeadlineExceeded.
type WaitTimeout struct {
	Finished map[string]Ingestion
	Pending  []string
	err      *Error
}

func newWaitTimeout(finished map[string]Ingestion, pending []string) *WaitTimeout {
	message := fmt.Sprintf("%d of %d ingestions had not finished in time", len(pending), len(pending)+len(finished))
	return &WaitTimeout{finished, pending, &Error{Code: codes.DeadlineExceeded, Message: message}}
}

func (w *WaitTimeout) Error() string              { return w.err.Error() }
func (w *WaitTimeout) Unwrap() error              { return w.err }
func (w *WaitTimeout) GRPCStatus() *status.Status { return w.err.GRPCStatus() }

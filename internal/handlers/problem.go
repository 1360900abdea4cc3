package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5/middleware"
	"go.opentelemetry.io/otel/trace"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

// Stable problem codes (the `code` member). Clients branch on these, never on
// titles or details.
const (
	codeBadRequest      = "bad_request"
	codeUnauthorized    = "unauthorized"
	codeForbidden       = "forbidden"
	codeNotFound        = "not_found"
	codeMethod          = "method_not_allowed"
	codeConflict        = "conflict"
	codeTooLarge        = "payload_too_large"
	codeMediaType       = "unsupported_media_type"
	codeChecksum        = "checksum_mismatch"
	codeStorageFull     = "insufficient_storage"
	codeUnavailable     = "unavailable"
	codeTimeout         = "timeout"
	codeNotImplemented  = "not_implemented"
	codeRange           = "range_not_satisfiable"
	codeInternal        = "internal"
	problemContentType  = "application/problem+json"
	retryAfterSeconds   = 5
	internalErrorDetail = "internal error; the server log has the details under this request id"
)

// problemFor maps an error to its status, code and client-safe detail. It is
// the one table between error kinds and HTTP (style.md §4). Only details
// written for clients (backup.Error) or fixed texts reach the client.
func problemFor(err error) (status int, code, detail string) {
	var maxBytes *http.MaxBytesError
	switch {
	case errors.As(err, &maxBytes):
		return http.StatusRequestEntityTooLarge, codeTooLarge,
			"request body larger than " + strconv.FormatInt(maxBytes.Limit, 10) + " bytes"
	case errors.Is(err, backup.ErrInvalid):
		return http.StatusBadRequest, codeBadRequest, backup.Detail(err)
	case errors.Is(err, backup.ErrChecksum):
		return http.StatusBadRequest, codeChecksum, "data does not match its checksum"
	case errors.Is(err, backup.ErrUnauthorized):
		return http.StatusUnauthorized, codeUnauthorized, backup.Detail(err)
	case errors.Is(err, backup.ErrForbidden):
		return http.StatusForbidden, codeForbidden, backup.Detail(err)
	case errors.Is(err, backup.ErrNotFound):
		return http.StatusNotFound, codeNotFound, backup.Detail(err)
	case errors.Is(err, backup.ErrConflict):
		return http.StatusConflict, codeConflict, backup.Detail(err)
	case errors.Is(err, backup.ErrStorageFull):
		if d := backup.Detail(err); d != "" {
			return http.StatusInsufficientStorage, codeStorageFull, d // a quota, named with its figures
		}
		return http.StatusInsufficientStorage, codeStorageFull, "the repository is full or over its quota"
	case errors.Is(err, backup.ErrUnavailable):
		return http.StatusServiceUnavailable, codeUnavailable, "a backend (catalog or chunk store) is unavailable; retry later"
	case errors.Is(err, backup.ErrNotImplemented):
		return http.StatusNotImplemented, codeNotImplemented, backup.Detail(err)
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, codeTimeout, "the operation timed out"
	}
	return http.StatusInternalServerError, codeInternal, internalErrorDetail
}

// writeProblem writes err as problem+json. Server errors are logged with the
// full chain and the request id; a client that went away gets nothing.
func (h *handler) writeProblem(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		h.log.InfoContext(r.Context(), "client went away", "err", err, "request_id", middleware.GetReqID(r.Context()))
		return
	}
	status, code, detail := problemFor(err)
	if status >= 500 {
		h.log.ErrorContext(r.Context(), "request failed", "status", status, "err", err,
			"method", r.Method, "path", r.URL.Path, "request_id", middleware.GetReqID(r.Context()))
	}
	writeProblemStatus(w, r.Context(), status, code, detail)
}

// writeProblemStatus writes a problem; ctx carries the request id and the
// request info (for the instance member).
func writeProblemStatus(w http.ResponseWriter, ctx context.Context, status int, code, detail string) {
	p := api.Problem{
		Type:   "about:blank",
		Title:  http.StatusText(status),
		Status: status,
		Code:   api.ProblemCode(code),
	}
	if detail != "" {
		p.Detail = &detail
	}
	if id := middleware.GetReqID(ctx); id != "" {
		p.RequestId = &id
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		id := sc.TraceID().String()
		p.TraceId = &id
	}
	if inst := requestInfoFrom(ctx).path; inst != "" {
		p.Instance = &inst
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="backstop"`)
	}
	w.Header().Set("Content-Type", problemContentType)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	// A write error here means the client is gone; there is no one left to tell.
	_ = json.NewEncoder(w).Encode(p)
}

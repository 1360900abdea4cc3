package handlers

import (
	"context"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"sort"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
)

// Body size limits by kind of request body. Streams (tar archives) have
// none: they are read as they arrive and never held whole.
const (
	maxJSONBody = 1 << 20  // JSON requests are small
	maxTextBody = 16 << 20 // guest and firewall configs, vzdump logs
)

type bodyKind int

const (
	bodyNone bodyKind = iota
	bodyJSON
	bodyText
	bodyStream
)

// operation is what the middleware needs to know about one route of the
// contract; it is read from api/openapi.yaml once, so auth and validation
// follow the document and cannot drift from it.
type operation struct {
	id           string
	method       string
	path         string // OpenAPI (and chi) pattern, e.g. /api/v1/backups/{id}/commit
	public       bool   // security: [] — no token needed
	role         backup.Role
	body         bodyKind
	bodyRequired bool
	mediaTypes   []string
	upgrade      string // protocol the route switches to (x-backstop-upgrade), or ""
	route        *routers.Route
}

// Contract extensions: the role an operation needs, and the protocol a
// route switches the connection to.
const (
	roleExtension    = "x-backstop-role"
	upgradeExtension = "x-backstop-upgrade"
)

// operations reads the embedded contract into a table keyed by
// "METHOD pattern". It fails on an operation that is neither public nor
// names a valid role, so a route cannot become public by omission.
func operations() (*openapi3.T, map[string]*operation, error) {
	spec, err := api.GetSwagger()
	if err != nil {
		return nil, nil, fmt.Errorf("handlers: load contract: %w", err)
	}
	ops := make(map[string]*operation)
	for path, item := range spec.Paths.Map() {
		for method, op := range item.Operations() {
			o := &operation{id: op.OperationID, method: method, path: path}
			// Validation runs on a copy without security requirements: the
			// guard has authenticated already, and kin-openapi's security
			// check reads the whole body into memory (a streamed tar
			// upload would be held whole).
			vop := *op
			vop.Security = &openapi3.SecurityRequirements{}
			o.route = &routers.Route{Spec: spec, Path: path, PathItem: item, Method: method, Operation: &vop}
			o.public = op.Security != nil && len(*op.Security) == 0
			if !o.public {
				role, _ := op.Extensions[roleExtension].(string)
				o.role = backup.Role(role)
				if !o.role.Valid() {
					return nil, nil, fmt.Errorf("handlers: operation %s has no valid %s", op.OperationID, roleExtension)
				}
			}
			o.upgrade, _ = op.Extensions[upgradeExtension].(string)
			if rb := op.RequestBody; rb != nil && rb.Value != nil {
				o.bodyRequired = rb.Value.Required
				for mt := range rb.Value.Content {
					o.mediaTypes = append(o.mediaTypes, mt)
				}
				sort.Strings(o.mediaTypes)
				switch {
				case rb.Value.Content.Get("application/json") != nil:
					o.body = bodyJSON
				case rb.Value.Content.Get("text/plain") != nil:
					o.body = bodyText
				default:
					o.body = bodyStream
				}
			}
			ops[method+" "+path] = o
		}
	}
	return spec, ops, nil
}

// checkContentType answers 415 for a body of a media type the operation
// does not take.
func (o *operation) checkContentType(r *http.Request) error {
	if o.body == bodyNone || (!o.bodyRequired && r.ContentLength == 0) {
		return nil
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err == nil {
		for _, want := range o.mediaTypes {
			if mt == want {
				return nil
			}
		}
		if o.body == bodyStream && mt == "application/octet-stream" {
			return nil
		}
	}
	return errUnsupportedMediaType{want: o.mediaTypes}
}

type errUnsupportedMediaType struct{ want []string }

func (e errUnsupportedMediaType) Error() string {
	return "Content-Type must be " + strings.Join(e.want, " or ")
}

// validate checks parameters and, for JSON bodies, the body against the
// contract (types, enums, patterns, unknown fields). Streamed and text
// bodies are never read here.
func (o *operation) validate(ctx context.Context, r *http.Request, pathParams map[string]string) error {
	in := &openapi3filter.RequestValidationInput{
		Request:    r,
		PathParams: pathParams,
		Route:      o.route,
		Options: &openapi3filter.Options{
			ExcludeRequestBody: o.body != bodyJSON || (!o.bodyRequired && r.ContentLength == 0),
			// Authentication already happened (the route copy has no
			// security requirements); this only keeps kin-openapi content.
			AuthenticationFunc: func(context.Context, *openapi3filter.AuthenticationInput) error { return nil },
		},
	}
	err := openapi3filter.ValidateRequest(ctx, in)
	if err == nil {
		return nil
	}
	var maxBytes *http.MaxBytesError
	if errors.As(err, &maxBytes) {
		return maxBytes
	}
	return backup.Errorf(backup.ErrInvalid, "%s", validationDetail(err))
}

// validationDetail turns a kin-openapi error into one line for the client:
// which parameter or body field is wrong and why, without schema dumps.
func validationDetail(err error) string {
	var reqErr *openapi3filter.RequestError
	if !errors.As(err, &reqErr) {
		return "request does not match the API contract"
	}
	where := "request"
	if reqErr.Parameter != nil {
		where = reqErr.Parameter.In + " parameter " + reqErr.Parameter.Name
	} else if reqErr.RequestBody != nil {
		where = "request body"
	}
	var schemaErr *openapi3.SchemaError
	if errors.As(reqErr.Err, &schemaErr) {
		field := strings.Join(schemaErr.JSONPointer(), ".")
		if field != "" {
			return fmt.Sprintf("%s: field %s: %s", where, field, schemaErr.Reason)
		}
		return fmt.Sprintf("%s: %s", where, schemaErr.Reason)
	}
	var parseErr *openapi3filter.ParseError
	if errors.As(reqErr.Err, &parseErr) {
		return fmt.Sprintf("%s: malformed: %s", where, parseErr.Reason)
	}
	if reqErr.Reason != "" {
		return where + ": " + reqErr.Reason
	}
	if reqErr.Err != nil {
		return where + ": " + firstLine(reqErr.Err.Error())
	}
	return where + " is invalid"
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// Package handlers is Backstop's HTTP edge: the v1 REST contract of
// api/openapi.yaml served on chi, with bearer-token auth, request
// validation, and errors as application/problem+json.
//
// Middleware order (style.md §10): request id → recoverer → OpenTelemetry
// (server span, HTTP metrics; the span is named after the chi route once
// the guard has found it) → access log → route lookup + auth → body limits
// + validation → generated router. Auth and
// validation read the contract itself, so a route's role and the shape of
// its input are written down once.
package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/backstop-pve/backstop/api"
	"github.com/backstop-pve/backstop/internal/backup"
	"github.com/backstop-pve/backstop/internal/dashboard"
)

// Config holds what the HTTP layer needs beyond its dependencies.
type Config struct {
	// AdminToken is the bootstrap admin bearer token (BACKSTOP_ADMIN_TOKEN);
	// "" disables it.
	AdminToken string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// NBDAdvertise is the host:port written into export URIs; when empty,
	// the host the client used for the API and NBDPort.
	NBDAdvertise string
	NBDPort      int
}

// Deps are the services the handlers call.
type Deps struct {
	Catalog backup.Catalog
	Backups *backup.Service
	Status  *StatusCache
	// Ready checks each backend for /readyz; nil entries are skipped.
	Ready []func(context.Context) error
	// NBD serves restore exports over upgraded HTTP connections.
	NBD interface {
		ServeConn(ctx context.Context, c net.Conn)
	}
	// Metrics serves GET /metrics (Prometheus text format); nil answers
	// 501.
	Metrics http.Handler
	// Telemetry, when set, wraps every request (but the health probes) in
	// a server span and records the HTTP server metrics.
	Telemetry *Telemetry
}

// Telemetry holds the OpenTelemetry providers of the HTTP layer.
type Telemetry struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	Propagator     propagation.TextMapPropagator
}

// handler serves the contract (it implements api.StrictServerInterface).
type handler struct {
	log     *slog.Logger
	cfg     Config
	catalog backup.Catalog
	backups *backup.Service
	status  *StatusCache
	nbd     interface {
		ServeConn(context.Context, net.Conn)
	}
	ready   []func(context.Context) error
	metrics http.Handler
	auth    *authenticator
	ops     map[string]*operation
	api     *chi.Mux // the generated routes, used to look up patterns

	dashboard *dashboard.Assets // the web dashboard's embedded files
}

var _ api.StrictServerInterface = (*handler)(nil)

// New returns the HTTP handler for the whole contract.
func New(log *slog.Logger, cfg Config, deps Deps) (http.Handler, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	_, ops, err := operations()
	if err != nil {
		return nil, err
	}
	assets, err := dashboard.Load()
	if err != nil {
		return nil, err
	}
	h := &handler{
		log:     log,
		cfg:     cfg,
		catalog: deps.Catalog,
		backups: deps.Backups,
		status:  deps.Status,
		ready:   deps.Ready,
		nbd:     deps.NBD,
		metrics: deps.Metrics,
		auth:    newAuthenticator(deps.Catalog, cfg.AdminToken, cfg.Now),
		ops:     ops,
		api:     chi.NewRouter(),

		dashboard: assets,
	}
	strict := api.NewStrictHandlerWithOptions(h, nil, api.StrictHTTPServerOptions{
		RequestErrorHandlerFunc: func(w http.ResponseWriter, r *http.Request, err error) {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				h.writeProblem(w, r, tooLarge) // 413 with the limit
				return
			}
			h.writeProblem(w, r, backup.Errorf(backup.ErrInvalid, "%s", firstLine(err.Error())))
		},
		ResponseErrorHandlerFunc: h.writeProblem,
	})
	api.HandlerWithOptions(strict, api.ChiServerOptions{
		BaseRouter: h.api,
		ErrorHandlerFunc: func(w http.ResponseWriter, r *http.Request, err error) {
			h.writeProblem(w, r, backup.Errorf(backup.ErrInvalid, "%s", firstLine(err.Error())))
		},
	})
	h.api.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeProblemStatus(w, r.Context(), http.StatusNotFound, codeNotFound, "no such route")
	})
	h.api.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeProblemStatus(w, r.Context(), http.StatusMethodNotAllowed, codeMethod, "method not allowed on this route")
	})

	root := chi.NewRouter()
	root.Use(middleware.RequestID, h.recoverer)
	if t := deps.Telemetry; t != nil {
		root.Use(otelMiddleware(t))
	}
	root.Use(h.accessLog, h.guard)
	root.Mount("/", h.api)
	return root, nil
}

// Routes lists the served routes as "METHOD pattern", for the contract test.
func Routes(h http.Handler) ([]string, error) {
	var out []string
	root, ok := h.(chi.Routes)
	if !ok {
		return nil, fmt.Errorf("handlers: %T is not a chi router", h)
	}
	err := chi.Walk(root, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		out = append(out, method+" "+route)
		return nil
	})
	return out, err
}

// guard finds the operation a request is for, authenticates and authorizes
// it by the contract, limits its body and validates its input. Nothing in
// a handler runs before all of that has passed.
func (h *handler) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Look the route up exactly as chi will route it (escaped path when
		// there is one), so no request reaches a handler unguarded.
		path := r.URL.RawPath
		if path == "" {
			path = r.URL.Path
		}
		rctx := chi.NewRouteContext()
		pattern := h.api.Find(rctx, r.Method, path)
		op := h.ops[r.Method+" "+pattern]
		if pattern == "" || op == nil {
			// Unknown route or method: let the router answer 404/405, but
			// only to someone who holds a token.
			if _, err := h.auth.authenticate(r.Context(), r); err != nil {
				h.writeProblem(w, r, err)
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		ctx := r.Context()
		if span := trace.SpanFromContext(ctx); span.IsRecording() {
			span.SetName(r.Method + " " + pattern)
			span.SetAttributes(attribute.String("http.route", pattern))
		}
		if !op.public {
			p, err := h.auth.authenticate(ctx, r)
			if err != nil {
				h.writeProblem(w, r, err)
				return
			}
			if !p.Role.Allows(op.role) {
				h.writeProblem(w, r, backup.Errorf(backup.ErrForbidden,
					"%s needs role %s; token %s has role %s", op.id, op.role, p.ID, p.Role))
				return
			}
			ctx = context.WithValue(ctx, principalKey{}, p)
			setLogAttrs(ctx, slog.String("token_id", p.ID))
			r = r.WithContext(ctx)
		}
		if op.upgrade != "" {
			if err := requireUpgrade(r, op.upgrade); err != nil {
				h.writeProblem(w, r, err)
				return
			}
		}
		switch op.body {
		case bodyJSON:
			r.Body = http.MaxBytesReader(w, r.Body, maxJSONBody)
		case bodyText:
			r.Body = http.MaxBytesReader(w, r.Body, maxTextBody)
		}
		if err := op.checkContentType(r); err != nil {
			writeProblemStatus(w, r.Context(), http.StatusUnsupportedMediaType, codeMediaType, err.Error())
			return
		}
		params := make(map[string]string, len(rctx.URLParams.Keys))
		for i, k := range rctx.URLParams.Keys {
			params[k] = rctx.URLParams.Values[i]
		}
		if err := op.validate(ctx, r, params); err != nil {
			h.writeProblem(w, r, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// recoverer turns a panic in a handler into a logged 500 problem.
func (h *handler) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v) // net/http's way to abort a response; not an error
			}
			h.log.ErrorContext(r.Context(), "panic in handler", "panic", fmt.Sprint(v),
				"stack", string(debug.Stack()), "request_id", middleware.GetReqID(r.Context()))
			writeProblemStatus(w, r.Context(), http.StatusInternalServerError, codeInternal, internalErrorDetail)
		}()
		next.ServeHTTP(w, r)
	})
}

type requestInfoKey struct{}

// requestInfo is what handlers need of the HTTP request itself.
type requestInfo struct {
	remote string // client address, host:port
	host   string // Host header
	path   string // URL path
}

func requestInfoFrom(ctx context.Context) requestInfo {
	ri, _ := ctx.Value(requestInfoKey{}).(requestInfo)
	return ri
}

type logAttrsKey struct{}

// setLogAttrs adds attributes to the request's access log line.
func setLogAttrs(ctx context.Context, attrs ...slog.Attr) {
	if p, ok := ctx.Value(logAttrsKey{}).(*[]slog.Attr); ok {
		*p = append(*p, attrs...)
	}
}

// accessLog writes one line per request.
func (h *handler) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		var attrs []slog.Attr
		ctx := context.WithValue(r.Context(), logAttrsKey{}, &attrs)
		ctx = context.WithValue(ctx, requestInfoKey{}, requestInfo{remote: r.RemoteAddr, host: r.Host, path: r.URL.Path})
		r = r.WithContext(ctx)
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		attrs = append(attrs,
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", ww.Status()),
			slog.Int("bytes", ww.BytesWritten()),
			slog.Duration("duration", time.Since(start)),
			slog.String("request_id", middleware.GetReqID(r.Context())),
			slog.String("remote", r.RemoteAddr),
		)
		h.log.LogAttrs(r.Context(), slog.LevelInfo, "http request", attrs...)
	})
}

// otelMiddleware starts the server span of a request (continuing the
// caller's trace from traceparent) and records otelhttp's HTTP metrics.
// Health probes are left out: they would be most of the spans and say
// nothing. The span is named "METHOD" here and renamed after the route
// pattern by guard, which is where the route is known.
func otelMiddleware(t *Telemetry) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return otelhttp.NewHandler(next, "http",
			otelhttp.WithTracerProvider(t.TracerProvider),
			otelhttp.WithMeterProvider(t.MeterProvider),
			otelhttp.WithPropagators(t.Propagator),
			otelhttp.WithFilter(func(r *http.Request) bool { return r.URL.Path != "/healthz" && r.URL.Path != "/readyz" }),
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method }),
		)
	}
}
